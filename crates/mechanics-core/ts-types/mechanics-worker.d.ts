/**
 * What the server passes to a js worker's default export, as `mechanics-server` builds it for
 * every attempt (`dispatch/mod.rs`, `job_request`), and `mechanics worker test` the same way.
 *
 * Global declarations, no module: with this file in a tsconfig's `include` a worker writes
 * `export default function main({ task, payload }: MechanicsWorkerArg<MyPayload>) { ... }`.
 * The server removes the types when the worker is added; nothing here exists at run time.
 */

/** The argument of a worker's default export: `{ event, task, payload }`. */
interface MechanicsWorkerArg<P = unknown> {
  /** The webhook event that made the task; `null` for a task submitted through the API or made by a cron fire. */
  event: MechanicsWorkerEvent | null;
  /** The task being run. */
  task: MechanicsWorkerTask;
  /**
   * The task's input: the JSON submitted with it (`null` when none was), for a cron fire
   * `{ cron: { schedule, tz, fire_time, dropped } }`.
   */
  payload: P | null;
}

/** A received webhook event, as `GET /api/v1/events/{id}` shows it (its main fields). */
interface MechanicsWorkerEvent {
  /** The event's id. */
  id: number;
  /** The name of the source it came in on. */
  source: string;
  /** Its type, e.g. `issues.opened`. */
  type: string;
  /** The delivery's JSON body. */
  payload: unknown;
}

/** The task an attempt runs. */
interface MechanicsWorkerTask {
  /** The task's id. */
  id: number;
  /**
   * This attempt's number, from 1; it grows with every claim (a retry, a lease that expired),
   * so a side effect can be made once per task rather than once per attempt.
   */
  attempt: number;
  /** The worker's name. */
  worker: string;
}

/**
 * What a worker returns: any JSON value, stored as the task's result. A `write_back: true`
 * worker's result with a string `reply` has that reply posted where the event came from.
 */
type MechanicsWorkerResult = unknown;
