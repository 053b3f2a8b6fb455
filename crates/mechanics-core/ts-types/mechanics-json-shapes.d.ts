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
 * Per-job configuration handed to the `mechanics:*` modules.
 *
 * The HTTP endpoints that `mechanics:endpoint` may call are added here by the endpoint feature;
 * until then the only valid value is `{}`, and every property is rejected as unknown (the index
 * signature below says so to TypeScript).
 *
 * Rust: `mechanics_core::job::MechanicsConfig`.
 */
export interface MechanicsConfig {
  [unknownProperty: string]: never;
}
