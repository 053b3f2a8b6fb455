// Echo a Slack mention back into its thread. `event.payload` is Slack's `event_callback`
// envelope; its `event` is the `app_mention`. The server posts `reply` with chat.postMessage in
// the thread of the message (thread_ts), so the conversation stays in one place.

export default function main({ event }) {
  const mention = event.payload.event;
  // Ignore other bots (and edits without text) so two bots cannot talk forever.
  if (!mention || mention.bot_id || typeof mention.text !== "string") {
    return { skipped: true };
  }
  // `<@U0LAN0Z89> hello` → `hello`.
  const said = mention.text.replace(/<@[A-Z0-9]+>/g, "").trim();
  const reply = said.length > 0 ? `<@${mention.user}> you said: ${said}` : `<@${mention.user}> 👋`;
  return { reply };
}
