/**
 * `mechanics:hex`: hexadecimal (base 16) encoding of bytes.
 *
 * ```js
 * import { encode, decode } from "mechanics:hex";
 * import hex from "mechanics:hex";
 * ```
 */
declare module "mechanics:hex" {
  /**
   * Bytes to read: a `TypedArray`, `DataView` or `ArrayBuffer`. Views of a `SharedArrayBuffer`
   * (and `SharedArrayBuffer`s themselves) are rejected with a `TypeError`.
   */
  export type BufferLike = ArrayBufferView | ArrayBuffer;

  /** Encodes the bytes of `bufferLike` as lowercase hexadecimal, two digits per byte. */
  export function encode(bufferLike: BufferLike): string;

  /**
   * Decodes hexadecimal digits of either case, two per byte; throws a `SyntaxError` on an odd
   * length or any other character.
   */
  export function decode(encoded: string): Uint8Array;

  /** The default export: an object holding `encode` and `decode`. */
  const hex: {
    encode: typeof encode;
    decode: typeof decode;
  };
  export default hex;
}
