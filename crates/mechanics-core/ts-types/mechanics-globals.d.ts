/**
 * The globals of a Mechanics job: web-standard APIs that behave as in browsers and Node, and
 * nothing that reaches the network, files or other processes.
 *
 * Use this file instead of TypeScript's `dom` library (`"lib": ["es2022"]` plus this file), which
 * would declare globals jobs do not have. Not declared, because they do not exist in a job:
 * `fetch` (call a configured endpoint with `mechanics:endpoint`), `XMLHttpRequest`, `WebSocket`,
 * `require`, `process`, `Buffer`; and `Atomics.waitAsync` is removed (a job is a single agent).
 *
 * Timers fire within the job's time limit; a timer still pending when the default export's
 * promise settles never fires (the job has ended). An exception thrown by a timer or microtask
 * callback fails the job.
 */

/** What `TextDecoder.decode` and the `crypto` functions read: bytes, not shared memory. */
type BufferSource = ArrayBufferView | ArrayBuffer;

// ---------------------------------------------------------------------------------------------
// console
// ---------------------------------------------------------------------------------------------

/**
 * Captured per attempt (64 KiB at most), never printed by the node. A leading string with `%s`,
 * `%d`, `%i`, `%f`, `%o`, `%O`, `%j`, `%c` directives formats the arguments after it.
 */
interface Console {
  log(...data: unknown[]): void;
  info(...data: unknown[]): void;
  warn(...data: unknown[]): void;
  error(...data: unknown[]): void;
  debug(...data: unknown[]): void;
}
declare var console: Console;

// ---------------------------------------------------------------------------------------------
// DOMException
// ---------------------------------------------------------------------------------------------

/**
 * The error web APIs throw, told apart by `name`: `InvalidCharacterError` (`atob`, `btoa`),
 * `DataCloneError` (`structuredClone`), `QuotaExceededError` and `TypeMismatchError`
 * (`crypto.getRandomValues`), `NotSupportedError`, `InvalidAccessError`, `SyntaxError`,
 * `DataError` (`crypto.subtle`). An `Error` (`instanceof Error` holds).
 */
interface DOMException extends Error {
  readonly name: string;
  readonly message: string;
  /** The legacy numeric code of the name (`InvalidCharacterError` is 5), 0 if it has none. */
  readonly code: number;
}
declare var DOMException: {
  prototype: DOMException;
  new (message?: string, name?: string): DOMException;
};

// ---------------------------------------------------------------------------------------------
// Encoding: TextEncoder, TextDecoder (UTF-8 only)
// ---------------------------------------------------------------------------------------------

interface TextEncoderEncodeIntoResult {
  /** UTF-16 code units of the source read. */
  read: number;
  /** Bytes written to the destination. */
  written: number;
}

/** Encodes strings as UTF-8; lone surrogates become U+FFFD. */
interface TextEncoder {
  readonly encoding: "utf-8";
  encode(input?: string): Uint8Array;
  /** Writes as many whole characters as fit into `destination`. */
  encodeInto(source: string, destination: Uint8Array): TextEncoderEncodeIntoResult;
}
declare var TextEncoder: {
  prototype: TextEncoder;
  new (): TextEncoder;
};

interface TextDecoderOptions {
  /** Throw a `TypeError` on invalid UTF-8 instead of decoding it as U+FFFD. */
  fatal?: boolean;
  /** Keep a leading byte order mark in the output. */
  ignoreBOM?: boolean;
}

interface TextDecodeOptions {
  /** More input follows: keep a character cut at the end for the next call. */
  stream?: boolean;
}

/** Decodes UTF-8 (the only encoding jobs have; other labels throw a `RangeError`). */
interface TextDecoder {
  readonly encoding: "utf-8";
  readonly fatal: boolean;
  readonly ignoreBOM: boolean;
  decode(input?: BufferSource, options?: TextDecodeOptions): string;
}
declare var TextDecoder: {
  prototype: TextDecoder;
  new (label?: string, options?: TextDecoderOptions): TextDecoder;
};

// ---------------------------------------------------------------------------------------------
// URL, URLSearchParams
// ---------------------------------------------------------------------------------------------

/** A URL parsed as the URL standard says; setters ignore invalid values, as in browsers. */
interface URL {
  hash: string;
  host: string;
  hostname: string;
  /** Setting it to something that does not parse throws a `TypeError`. */
  href: string;
  readonly origin: string;
  password: string;
  pathname: string;
  port: string;
  protocol: string;
  search: string;
  /** Linked to the URL: changing it rewrites the query. */
  readonly searchParams: URLSearchParams;
  username: string;
  toString(): string;
  toJSON(): string;
}
declare var URL: {
  prototype: URL;
  /** Throws a `TypeError` when `url` (against `base`) does not parse. */
  new (url: string | URL, base?: string | URL): URL;
  canParse(url: string | URL, base?: string | URL): boolean;
  /** The URL, or `null` when it does not parse. */
  parse(url: string | URL, base?: string | URL): URL | null;
};

/** `application/x-www-form-urlencoded` name-value pairs, in order. */
interface URLSearchParams {
  readonly size: number;
  append(name: string, value: string): void;
  delete(name: string, value?: string): void;
  get(name: string): string | null;
  getAll(name: string): string[];
  has(name: string, value?: string): boolean;
  set(name: string, value: string): void;
  /** A stable sort by name. */
  sort(): void;
  toString(): string;
  forEach(callback: (value: string, name: string, parent: URLSearchParams) => void, thisArg?: unknown): void;
  entries(): IterableIterator<[string, string]>;
  keys(): IterableIterator<string>;
  values(): IterableIterator<string>;
  [Symbol.iterator](): IterableIterator<[string, string]>;
}
declare var URLSearchParams: {
  prototype: URLSearchParams;
  new (
    init?: string | Iterable<[string, string]> | Record<string, string> | URLSearchParams,
  ): URLSearchParams;
};

// ---------------------------------------------------------------------------------------------
// Base64 of binary strings
// ---------------------------------------------------------------------------------------------

/** The bytes of base64 `data`, one character each; throws an `InvalidCharacterError`. */
declare function atob(data: string): string;
/** The base64 of a string of characters up to U+00FF; throws an `InvalidCharacterError`. */
declare function btoa(data: string): string;

// ---------------------------------------------------------------------------------------------
// structuredClone
// ---------------------------------------------------------------------------------------------

interface StructuredSerializeOptions {
  /** Must be empty: jobs cannot transfer objects. */
  transfer?: never[];
}

/**
 * A deep copy of plain data: primitives, objects, arrays, `Date`, `RegExp`, `Map`, `Set`,
 * `ArrayBuffer`, typed arrays, `DataView`, errors; shared references and cycles are kept.
 * Functions, symbols and other objects throw a `DataCloneError`.
 */
declare function structuredClone<T = any>(value: T, options?: StructuredSerializeOptions): T;

// ---------------------------------------------------------------------------------------------
// Microtasks and timers
// ---------------------------------------------------------------------------------------------

/** Runs `callback` after the current task, with the promise reactions, in order. */
declare function queueMicrotask(callback: () => void): void;

/**
 * Runs `handler(...args)` after `timeout` milliseconds (0 by default), within the job's time
 * limit. Returns an id for `clearTimeout`. A string handler is refused (no code from strings).
 */
declare function setTimeout<A extends unknown[]>(
  handler: (...args: A) => void,
  timeout?: number,
  ...args: A
): number;
declare function clearTimeout(id: number | undefined): void;
/** Runs `handler(...args)` every `timeout` milliseconds until `clearInterval`. */
declare function setInterval<A extends unknown[]>(
  handler: (...args: A) => void,
  timeout?: number,
  ...args: A
): number;
declare function clearInterval(id: number | undefined): void;

// ---------------------------------------------------------------------------------------------
// crypto
// ---------------------------------------------------------------------------------------------

type HashAlgorithm = "SHA-1" | "SHA-256" | "SHA-384" | "SHA-512";
type AlgorithmIdentifier<Name extends string = string> = Name | { name: Name };

interface HmacImportParams {
  name: "HMAC";
  hash: AlgorithmIdentifier<HashAlgorithm>;
  /** The key's length in bits; it must match the key data. */
  length?: number;
}

/** An imported key; its bytes are never visible to JavaScript. */
interface CryptoKey {
  readonly type: "secret";
  readonly extractable: boolean;
  readonly algorithm: { name: "HMAC"; hash: { name: HashAlgorithm }; length: number };
  readonly usages: ("sign" | "verify")[];
}

/** The digests and HMAC keys of the Web Crypto API; errors reject the promise. */
interface SubtleCrypto {
  digest(algorithm: AlgorithmIdentifier<HashAlgorithm>, data: BufferSource): Promise<ArrayBuffer>;
  importKey(
    format: "raw",
    keyData: BufferSource,
    algorithm: HmacImportParams,
    extractable: boolean,
    keyUsages: ("sign" | "verify")[],
  ): Promise<CryptoKey>;
  sign(algorithm: AlgorithmIdentifier<"HMAC">, key: CryptoKey, data: BufferSource): Promise<ArrayBuffer>;
  /** Compares in constant time. */
  verify(
    algorithm: AlgorithmIdentifier<"HMAC">,
    key: CryptoKey,
    signature: BufferSource,
    data: BufferSource,
  ): Promise<boolean>;
}

interface Crypto {
  readonly subtle: SubtleCrypto;
  /** Fills an integer typed array of at most 65,536 bytes (`QuotaExceededError` above). */
  getRandomValues<T extends Int8Array | Uint8Array | Uint8ClampedArray | Int16Array | Uint16Array | Int32Array | Uint32Array | BigInt64Array | BigUint64Array>(
    array: T,
  ): T;
  /** A random version 4 UUID, lowercase. */
  randomUUID(): `${string}-${string}-${string}-${string}-${string}`;
}
declare var crypto: Crypto;
