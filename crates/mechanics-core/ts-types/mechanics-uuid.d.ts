/**
 * `mechanics:uuid`: UUID generation (RFC 9562).
 *
 * ```js
 * import uuid from "mechanics:uuid";
 * import { uuid } from "mechanics:uuid";
 * ```
 */
declare module "mechanics:uuid" {
  /**
   * Which UUID to make:
   * - `"v4"`: random (the default);
   * - `"v3"` / `"v5"`: name-based (MD5 / SHA-1), deterministic; they need `options`;
   * - `"v6"`: time-ordered Gregorian timestamp with a random node ID;
   * - `"v7"`: Unix-millisecond timestamp with random bits;
   * - `"nil"` / `"max"`: all zero / all one bits.
   */
  export type UuidVariant = "v3" | "v4" | "v5" | "v6" | "v7" | "nil" | "max";

  /** The inputs of a name-based (`"v3"` / `"v5"`) UUID. */
  export interface UuidNameOptions {
    /** The namespace, itself a UUID string. */
    namespace: string;
    /** The name within the namespace. */
    name: string;
  }

  /**
   * Returns a lowercase, hyphenated UUID string. The variant defaults to `"v4"`; `"v3"` and
   * `"v5"` require `options` with `namespace` and `name`, which the other variants ignore.
   */
  export function uuid(variant?: UuidVariant, options?: UuidNameOptions): string;

  /** The default export is `uuid` itself. */
  export default uuid;
}
