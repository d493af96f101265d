// Zero detection for pages and disk chunks: zero pages need no frame, and
// snapshots, migration and disk copies send a marker instead of their bytes.

/** Is every byte of `b` zero? Word by word when `b` is 8-byte aligned (pool
 *  frames are), about 8 times fewer loads and compares than byte by byte. */
export function isAllZero(b: Uint8Array): boolean {
  const words = b.byteOffset % 8 === 0 ? b.length >>> 3 : 0;
  if (words > 0) {
    const w = new BigInt64Array(b.buffer, b.byteOffset, words);
    for (let i = 0; i < words; i++) if (w[i] !== 0n) return false;
  }
  for (let i = words * 8; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}
