// The host's page store for memory overcommit (issue 14): where the memory
// manager puts guest pages it reclaims. A cold page that is all zeros needs no
// storage; one that compresses to half goes to the compressed store; any other
// goes to the swap file raw. All three work from every thread.

export { PAGE_SIZE, MAX_COMPRESSED, PageCodecError, isZeroPage, compressPage, decompressPage } from "./page-codec.js";
export { CompressedStore, SLOT_BITS, MAX_STORE_BYTES, type CompressedStoreHandle, type CompressedStoreStats } from "./compressed-store.js";
export { SwapFile, MAX_SWAP_BYTES, type SwapFileHandle, type SwapFileStats } from "./swap-file.js";
export { PageStoreError, SwapError } from "./errors.js";
