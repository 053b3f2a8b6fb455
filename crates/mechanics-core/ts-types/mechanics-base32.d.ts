/**
 * `mechanics:base32`: Base32 (RFC 4648 §6) and Base32hex (RFC 4648 §7) encoding of bytes.
 *
 * ```js
 * import { encode, decode } from "mechanics:base32";
 * import base32 from "mechanics:base32";
 * ```
 */
declare module "mechanics:base32" {
  /**
   * Bytes to read: a `TypedArray`, `DataView` or `ArrayBuffer`. Views of a `SharedArrayBuffer`
   * (and `SharedArrayBuffer`s themselves) are rejected with a `TypeError`.
   */
  export type BufferLike = ArrayBufferView | ArrayBuffer;

  /** The alphabet: `"base32"` (`A-Z2-7`) or `"base32hex"` (`0-9A-V`). */
  export type Base32Variant = "base32" | "base32hex";

  /** Encodes the bytes of `bufferLike` as uppercase text padded with `=` (RFC 4648). */
  export function encode(bufferLike: BufferLike, variant?: Base32Variant): string;

  /**
   * Decodes `encoded`; letters may be of either case, and padded and unpadded input are both
   * accepted. Throws a `SyntaxError` on invalid input.
   */
  export function decode(encoded: string, variant?: Base32Variant): Uint8Array;

  /** The default export: an object holding `encode` and `decode`. */
  const base32: {
    encode: typeof encode;
    decode: typeof decode;
  };
  export default base32;
}
