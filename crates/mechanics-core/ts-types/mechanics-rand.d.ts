/**
 * `mechanics:rand`: cryptographically secure random bytes.
 *
 * ```js
 * import fillRandom from "mechanics:rand";
 * import { fillRandom } from "mechanics:rand";
 * ```
 */
declare module "mechanics:rand" {
  /**
   * Bytes to fill: a `TypedArray`, `DataView` or `ArrayBuffer`. Views of a `SharedArrayBuffer`
   * (and `SharedArrayBuffer`s themselves) are rejected with a `TypeError`.
   */
  export type BufferLike = ArrayBufferView | ArrayBuffer;

  /** Overwrites every byte viewed by `bufferLike` with cryptographically secure random bytes. */
  export function fillRandom(bufferLike: BufferLike): void;

  /** The default export is `fillRandom` itself. */
  export default fillRandom;
}
