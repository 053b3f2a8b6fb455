// A Telegram bot with a few commands. `event.payload` is Telegram's Update; the server sends
// `reply` with sendMessage to the same chat, as a reply to the message.

const HELP = "I know /start, /help, /ping, /time and /roll; anything else I repeat.";

export default function main({ event, task }) {
  const message = event.payload.message;
  if (!message || typeof message.text !== "string") {
    return { skipped: true }; // photos, stickers, joins…
  }
  const name = message.from?.first_name ?? "there";
  const [command] = message.text.trim().split(/\s+/);
  switch (command.replace(/@.*$/, "")) {
    case "/start":
      return { reply: `Hello ${name}! ${HELP}` };
    case "/help":
      return { reply: HELP };
    case "/ping":
      return { reply: `pong (task ${task.id})` };
    case "/time":
      return { reply: `It is ${new Date().toISOString()} (UTC).` };
    case "/roll":
      return { reply: `🎲 ${1 + Math.floor(Math.random() * 6)}` };
    default:
      return { reply: `You said: ${message.text}` };
  }
}
