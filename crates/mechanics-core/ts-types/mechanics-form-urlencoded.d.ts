/**
 * `mechanics:form-urlencoded`: `application/x-www-form-urlencoded` encoding (UTF-8) of a flat
 * record of strings.
 *
 * ```js
 * import { encode, decode } from "mechanics:form-urlencoded";
 * import formUrlencoded from "mechanics:form-urlencoded";
 * ```
 */
declare module "mechanics:form-urlencoded" {
  /**
   * Encodes the own enumerable string-keyed properties of `record`, whose values must all be
   * strings, as `key=value` pairs joined by `&` (no leading `?`). Keys are emitted in lexical
   * order, so equal records always encode to the same text.
   */
  export function encode(record: Record<string, string>): string;

  /**
   * Decodes a query string; a leading `?` is accepted. When a key occurs more than once, the last
   * value wins.
   */
  export function decode(params: string): Record<string, string>;

  /** The default export: an object holding `encode` and `decode`. */
  const formUrlencoded: {
    encode: typeof encode;
    decode: typeof decode;
  };
  export default formUrlencoded;
}
