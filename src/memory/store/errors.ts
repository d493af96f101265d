// The errors of the host's page store (compressed-store.ts, swap-file.ts).

/** Misuse of a store: a slot that is not in use (double free, a handle never
 *  handed out, garbage), or data of a length the store does not take. A
 *  hypervisor bug, like FramePoolError. */
export class PageStoreError extends Error {
  override readonly name = "PageStoreError";
}

/** The swap file's I/O failed (ENOSPC, EIO, ...). The page is not lost: the
 *  slot stays allocated and the caller still holds the data, so it can pause
 *  the VM and retry or report. */
export class SwapError extends Error {
  override readonly name = "SwapError";
  constructor(
    message: string,
    /** The errno's name ("ENOSPC"), when the system gave one. */
    readonly code: string | undefined,
  ) {
    super(message);
  }
}
