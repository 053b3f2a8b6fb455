/**
 * Canonical JSON shapes of the job types of `mechanics-core`, as accepted by serde
 * (`deny_unknown_fields`: every property not listed here is rejected).
 *
 * The same shapes are described as JSON Schema (draft 2020-12) in `../json-schema/*.schema.json`;
 * a test of the crate keeps the two and the Rust types in sync.
 */

/**
 * One unit of work for a `MechanicsPool`: an ES module whose default export is called with `arg`.
 *
 * Rust: `mechanics_core::job::MechanicsJob`.
 */
export interface MechanicsJob {
  /**
   * The ES module source. Must contain at least one non-whitespace character.
   */
  module_source: string;
  /**
   * The argument passed to the module's default export: any JSON value.
   * @default null
   */
  arg?: unknown;
  /**
   * The job's configuration.
   * @default {}
   */
  config?: MechanicsConfig;
  /**
   * Limits for this job instead of the pool's default limits. Omitted or `null` means the pool's
   * defaults; a field omitted inside the object takes its built-in default.
   */
  limits?: MechanicsExecutionLimits | null;
  /**
   * When `module_source` was transpiled from another language (TypeScript): the map back to the
   * original, so that positions in the job's error message and console output name the original
   * file and lines. Omitted or `null` means the positions are the module's own.
   */
  source_map?: SourceMap | null;
}

/**
 * Where the parts of a transpiled module came from: the original file's name and the mappings of
 * a standard source map (version 3) with that one source and no names.
 *
 * Rust: `mechanics_core::typescript::SourceMap`.
 */
export interface SourceMap {
  /**
   * The original file's name, as positions show it (`worker.ts:12:5`): not empty, no control
   * characters.
   */
  source: string;
  /**
   * The Base64 VLQ mappings from positions of `module_source` to positions of the original
   * (columns in UTF-16 code units). They must decode, with source index 0 and no name indices.
   */
  mappings: string;
}

/**
 * Limits that bound what one job may consume. Every limit applies to the whole job, promise
 * callbacks included. Every field is optional and must be a JSON integer within its range.
 *
 * Rust: `mechanics_core::job::MechanicsExecutionLimits`.
 */
export interface MechanicsExecutionLimits {
  /**
   * Wall-clock time for the whole job, synchronous code and promise callbacks alike, in
   * milliseconds (1 to 86,400,000, i.e. 24 h).
   * @default 10000
   */
  max_execution_time_ms?: number;
  /**
   * Loop iterations counted over the whole job, not per call frame (at least 1).
   * @default 1000000
   */
  max_loop_iterations?: number;
  /**
   * Nested calls (1 to 10,000).
   * @default 512
   */
  max_recursion_depth?: number;
  /**
   * Values on the VM stack (1 to 10,485,760).
   * @default 10240
   */
  max_stack_size?: number;
  /**
   * Heap memory the job may allocate, in MiB (1 to 65,536).
   * @default 128
   */
  max_memory_mb?: number;
  /**
   * Size of the module source in bytes (1 to 67,108,864, i.e. 64 MiB).
   * @default 1048576
   */
  max_module_source_bytes?: number;
  /**
   * Size of the job's result serialized as JSON, in bytes (1 to 1,073,741,824, i.e. 1 GiB).
   * @default 8388608
   */
  max_result_bytes?: number;
}

/**
 * Per-job configuration handed to the `mechanics:*` modules: the HTTP endpoints that
 * `mechanics:endpoint` may call, by name. Every endpoint is validated when the configuration is
 * deserialized; an invalid one fails the whole configuration.
 *
 * Rust: `mechanics_core::job::MechanicsConfig`.
 */
export interface MechanicsConfig {
  /**
   * The endpoints a job may call, by the name it passes to `endpoint(name, options)`. A name is
   * non-empty and holds no control character.
   * @default {}
   */
  endpoints?: Record<string, HttpEndpoint>;
}

/**
 * An HTTP method. Any ASCII letter case is accepted (`"Post"` too); it is written back lowercase.
 */
export type HttpMethod =
  | "get"
  | "post"
  | "put"
  | "patch"
  | "delete"
  | "head"
  | "options"
  | "GET"
  | "POST"
  | "PUT"
  | "PATCH"
  | "DELETE"
  | "HEAD"
  | "OPTIONS";

/**
 * How a body is written and read:
 * - `"json"`: any JSON value, sent as `application/json`;
 * - `"utf8"`: a string, sent as `text/plain; charset=utf-8`;
 * - `"bytes"`: a TypedArray, ArrayBuffer or DataView in, a Uint8Array out, sent as
 *   `application/octet-stream`.
 */
export type EndpointBodyType = "json" | "utf8" | "bytes";

/**
 * How a slotted query parameter treats a missing or empty value:
 * - `"required"`: must resolve to a non-empty value;
 * - `"required_allow_empty"`: must resolve; may be empty;
 * - `"optional"`: missing or empty is left out;
 * - `"optional_allow_empty"`: missing is left out; provided (even empty) is emitted.
 */
export type SlottedQueryMode =
  | "required"
  | "required_allow_empty"
  | "optional"
  | "optional_allow_empty";

/**
 * One HTTP endpoint a job may call through `mechanics:endpoint`. The method, the URL but for its
 * `{slot}` values, the query parameters and the headers are fixed here; a job only fills the slots
 * this configuration opens and overrides the headers it allowlists.
 *
 * Every number must be a JSON integer. Rules checked when the configuration is deserialized
 * include: `url_param_specs` has exactly one entry per placeholder of `url_template`;
 * `min_bytes <= max_bytes` and a `default` fits them; header names are valid and unique ignoring
 * case.
 *
 * Rust: `mechanics_core::endpoint::HttpEndpoint`.
 */
export interface HttpEndpoint {
  /** The HTTP method. */
  method: HttpMethod;
  /**
   * An absolute `http` or `https` URL whose path may hold `{slot}` placeholders (ASCII letters,
   * digits and `_`; each name once), filled from `options.urlParams` and percent-encoded as part
   * of one path segment. No query or fragment: use `query_specs`.
   */
  url_template: string;
  /**
   * The rules of each placeholder of `url_template`, by name: one entry per placeholder.
   * @default {}
   */
  url_param_specs?: Record<string, UrlParamSpec>;
  /**
   * The query parameters, emitted in this order.
   * @default []
   */
  query_specs?: QuerySpec[];
  /**
   * Request headers sent on every call (names unique ignoring case). Values are never shown to
   * JavaScript.
   * @default {}
   */
  headers?: Record<string, string>;
  /**
   * How `options.body` is sent. `null` means `"json"` for `post`, `put` and `patch`; `get`,
   * `delete`, `head` and `options` send no body and must leave this `null`.
   * @default null
   */
  request_body_type?: EndpointBodyType | null;
  /**
   * How the response body is read. `null` means `"json"`.
   * @default "json"
   */
  response_body_type?: EndpointBodyType | null;
  /**
   * Largest response body accepted, in bytes (at least 1). `null` means the pool's
   * `default_http_response_max_bytes`.
   * @default null
   */
  response_max_bytes?: number | null;
  /**
   * When a call is retried, and how long it waits in between. `null` means the defaults (one
   * attempt, no retries).
   */
  retry_policy?: EndpointRetryPolicy | null;
  /**
   * Request headers JavaScript may set through `options.headers` (case-insensitive).
   * @default []
   */
  overridable_request_headers?: string[];
  /**
   * Response headers returned to JavaScript in the result's `headers` (case-insensitive; keys
   * are lowercased).
   * @default []
   */
  exposed_response_headers?: string[];
  /**
   * Time for one attempt, response body included, in milliseconds (at least 1). `null` means the
   * pool's `default_http_timeout_ms`.
   * @default null
   */
  timeout_ms?: number | null;
  /**
   * Lets non-2xx responses through to JavaScript (with `ok: false`) instead of failing the call.
   * @default false
   */
  allow_non_2xx_status?: boolean;
  /**
   * Follows redirects, at most 10; configured and JavaScript headers are dropped as soon as a
   * redirect leaves the endpoint's origin.
   * @default false
   */
  follow_redirects?: boolean;
}

/**
 * Rules for one `{slot}` of the URL template. A missing or empty value from JavaScript takes
 * `default` when set, else resolves to the empty string; the resolved value's UTF-8 length must
 * lie within `min_bytes..=max_bytes`.
 *
 * Rust: `mechanics_core::endpoint::UrlParamSpec`.
 */
export interface UrlParamSpec {
  /**
   * Value used when JavaScript passes none, or an empty one.
   * @default null
   */
  default?: string | null;
  /**
   * Shortest accepted value, in UTF-8 bytes.
   * @default null
   */
  min_bytes?: number | null;
  /**
   * Longest accepted value, in UTF-8 bytes.
   * @default null
   */
  max_bytes?: number | null;
}

/**
 * One query parameter, told apart by `type`.
 *
 * Rust: `mechanics_core::endpoint::QuerySpec`.
 */
export type QuerySpec = ConstQuerySpec | SlottedQuerySpec;

/** A fixed `key=value` query parameter. */
export interface ConstQuerySpec {
  type: "const";
  /** Parameter name (non-empty). */
  key: string;
  /** Parameter value. */
  value: string;
}

/**
 * A query parameter whose value comes from JavaScript's `options.queries[slot]`, else from
 * `default`, then goes through `mode`. An empty `default` counts as absent in the `"required"` and
 * `"optional"` modes, and as a value in the `*_allow_empty` modes, which also forbid a
 * `min_bytes` above 0.
 */
export interface SlottedQuerySpec {
  type: "slotted";
  /** Parameter name (non-empty). */
  key: string;
  /** Name of the value in `options.queries` (ASCII letters, digits and `_`). */
  slot: string;
  /**
   * How a missing or empty value is treated.
   * @default "required"
   */
  mode?: SlottedQueryMode;
  /**
   * Value used when JavaScript passes none.
   * @default null
   */
  default?: string | null;
  /**
   * Shortest accepted value, in UTF-8 bytes.
   * @default null
   */
  min_bytes?: number | null;
  /**
   * Longest accepted value, in UTF-8 bytes.
   * @default null
   */
  max_bytes?: number | null;
}

/**
 * When an endpoint call is retried, and how long it waits in between. Every field is optional.
 *
 * The wait before retry n is `base_backoff_ms * 2^(n-1)`, capped at `max_backoff_ms`; after a 429
 * it is the response's `Retry-After` (delta-seconds) when `respect_retry_after` is set and the
 * header is present, else `rate_limit_backoff_ms`. Every wait is capped at `max_retry_delay_ms`.
 *
 * Rust: `mechanics_core::endpoint::EndpointRetryPolicy`.
 */
export interface EndpointRetryPolicy {
  /**
   * Attempts in all, the first included (1 to 20; 1 means no retries).
   * @default 1
   */
  max_attempts?: number;
  /**
   * First backoff in milliseconds, doubled on every further retry; not larger than
   * `max_backoff_ms`.
   * @default 100
   */
  base_backoff_ms?: number;
  /**
   * Cap on the exponential backoff, in milliseconds.
   * @default 5000
   */
  max_backoff_ms?: number;
  /**
   * Cap on any single wait, `Retry-After` included, in milliseconds (at least 1).
   * @default 30000
   */
  max_retry_delay_ms?: number;
  /**
   * Wait after a 429 without a usable `Retry-After`, in milliseconds.
   * @default 1000
   */
  rate_limit_backoff_ms?: number;
  /**
   * Retry when the connection fails or breaks.
   * @default true
   */
  retry_on_io_errors?: boolean;
  /**
   * Retry when an attempt times out.
   * @default true
   */
  retry_on_timeout?: boolean;
  /**
   * Honour a 429 response's `Retry-After: <seconds>`.
   * @default true
   */
  respect_retry_after?: boolean;
  /**
   * Response statuses that are retried (each 100 to 599).
   * @default [429, 500, 502, 503, 504]
   */
  retry_on_status?: number[];
}
