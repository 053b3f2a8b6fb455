// Ping the `heartbeat` endpoint of the worker's config. A cron task's payload is
// { cron: { schedule, tz, fire_time, dropped } } (fire_time in Unix ms; dropped counts missed
// fires skipped after downtime); a task submitted by hand has whatever payload it was given.
import endpoint from "mechanics:endpoint";

export default async function main({ payload, task }) {
  const cron = payload?.cron;
  const fireTime = cron ? new Date(cron.fire_time).toISOString() : new Date().toISOString();
  const res = await endpoint("heartbeat", { queries: { fire_time: fireTime } });
  return {
    ok: res.ok,
    status: res.status,
    fire_time: fireTime,
    dropped: cron?.dropped ?? 0,
    attempt: task.attempt,
  };
}
