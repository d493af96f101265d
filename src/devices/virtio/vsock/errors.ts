// The vsock backend's one-line errors, apart from the backend so that code
// telling them apart (cli/vm-devices.ts isDeviceError) need not load it.
export class VsockBackendError extends Error {}
