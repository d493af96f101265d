// The version `tsvisor --version` and the host API report.
export const VERSION = "0.1.0";
