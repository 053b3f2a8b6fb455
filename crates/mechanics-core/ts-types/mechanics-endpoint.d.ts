/**
 * `mechanics:endpoint`: calls to the HTTP endpoints of the job's configuration
 * (`MechanicsConfig.endpoints`, see `mechanics-json-shapes.d.ts`). A job names an endpoint and
 * fills the slots it opens; the method, URL, query keys and configured headers stay in the
 * configuration, which the job cannot read.
 *
 * ```js
 * import endpoint from "mechanics:endpoint";
 * import { endpoint } from "mechanics:endpoint";
 *
 * const res = await endpoint("primary", { urlParams: { user_id: "u-123" }, body: arg });
 * ```
 */
declare module "mechanics:endpoint" {
  /**
   * Bytes to send: a `TypedArray`, `DataView` or `ArrayBuffer`. Views of a `SharedArrayBuffer`
   * (and `SharedArrayBuffer`s themselves) are rejected with a `TypeError`.
   */
  export type BufferLike = ArrayBufferView | ArrayBuffer;

  /** What a call passes. Every member is optional; any other member is rejected. */
  export interface EndpointOptions {
    /** Values of the `{slot}` placeholders of the endpoint's `url_template`. */
    urlParams?: Record<string, string>;
    /**
     * Values of the endpoint's slotted query parameters, by slot. A key that no slotted query
     * spec of the endpoint names is rejected.
     */
    queries?: Record<string, string>;
    /**
     * Request headers to set, only those the endpoint lists in `overridable_request_headers`
     * (case-insensitive; one name must not appear twice in different cases). They override the
     * configured headers.
     */
    headers?: Record<string, string>;
    /**
     * The request body, in the endpoint's `request_body_type`: any JSON-convertible value for
     * `"json"` (`null` is sent as JSON `null`), a `string` for `"utf8"`, a `BufferLike` for
     * `"bytes"`. Omitted or `undefined` sends no body. Only `post`, `put` and `patch` endpoints
     * take a body; for the others any `body`, `null` included, is rejected.
     */
    body?: unknown;
  }

  /** What a call resolves to, whatever the status. */
  export interface EndpointResponse<Body = unknown> {
    /**
     * The response body, in the endpoint's `response_body_type`: the parsed JSON value for
     * `"json"`, a `string` for `"utf8"`, a `Uint8Array` for `"bytes"`; `null` when the body is
     * empty.
     */
    body: Body | null;
    /**
     * The response headers the endpoint lists in `exposed_response_headers`, by lowercase name;
     * several values of one header are joined with `", "`.
     */
    headers: Record<string, string>;
    /** The HTTP status code. */
    status: number;
    /**
     * Whether `status` is 2xx. Other statuses reject the call unless the endpoint sets
     * `allow_non_2xx_status`.
     */
    ok: boolean;
  }

  /**
   * Calls the endpoint `name` of the job's configuration. The promise rejects when the name is
   * unknown, when `options` breaks the endpoint's rules, when the exchange fails after the
   * endpoint's retries, and on a non-2xx status unless the endpoint allows it.
   */
  export function endpoint<Body = unknown>(
    name: string,
    options?: EndpointOptions,
  ): Promise<EndpointResponse<Body>>;

  /** The default export is `endpoint` itself. */
  export default endpoint;
}
