/**
 * `mechanics:base64`: Base64 (RFC 4648 §4) and Base64url (RFC 4648 §5) encoding of bytes.
 *
 * ```js
 * import { encode, decode } from "mechanics:base64";
 * import base64 from "mechanics:base64";
 * ```
 */
declare module "mechanics:base64" {
  /**
   * Bytes to read: a `TypedArray`, `DataView` or `ArrayBuffer`. Views of a `SharedArrayBuffer`
   * (and `SharedArrayBuffer`s themselves) are rejected with a `TypeError`.
   */
  export type BufferLike = ArrayBufferView | ArrayBuffer;

  /** The alphabet: `"base64"` (`+/`, padded output) or `"base64url"` (`-_`, unpadded output). */
  export type Base64Variant = "base64" | "base64url";

  /**
   * Encodes the bytes of `bufferLike`. `"base64"` output is padded with `=`; `"base64url"` output
   * is not padded.
   */
  export function encode(bufferLike: BufferLike, variant?: Base64Variant): string;

  /**
   * Decodes `encoded`; padded and unpadded input are both accepted. Throws a `SyntaxError` on
   * invalid input.
   */
  export function decode(encoded: string, variant?: Base64Variant): Uint8Array;

  /** The default export: an object holding `encode` and `decode`. */
  const base64: {
    encode: typeof encode;
    decode: typeof decode;
  };
  export default base64;
}
