// Fetches one user through the `users` endpoint of config.json. The job fills the `id` slot and
// may set `x-request-id`; the URL's host, the query keys and the authorization header are the
// config's, and the job cannot read or change them.
import endpoint from "mechanics:endpoint";

export default async function main({ id }) {
  const res = await endpoint("users", { urlParams: { id }, headers: { "x-request-id": "r-1" } });
  return { status: res.status, ok: res.ok, name: res.body.name, type: res.headers["content-type"] };
}
