// Triage a newly opened GitHub issue: guess its kind from the title and body and thank the
// author. The default export gets { event, task, payload }; `event.payload` is GitHub's delivery.
// Returning { reply } makes the server post it as a comment on the issue (write_back: true).

const RULES = [
  { label: "bug", words: ["bug", "crash", "error", "panic", "broken", "fails", "exception"] },
  { label: "enhancement", words: ["feature", "support", "add ", "would be nice", "proposal"] },
  { label: "question", words: ["how do", "how to", "question", "why does", "?"] },
  { label: "docs", words: ["docs", "documentation", "readme", "typo"] },
];

export default function main({ event }) {
  const { issue, repository, sender } = event.payload;
  // Never answer bots (including ourselves).
  if (!issue || sender?.type === "Bot") {
    return { skipped: true };
  }
  const text = `${issue.title}\n${issue.body ?? ""}`.toLowerCase();
  const labels = RULES.filter((rule) => rule.words.some((w) => text.includes(w))).map(
    (rule) => rule.label,
  );
  const guess = labels.length > 0 ? labels.map((l) => `\`${l}\``).join(", ") : "`needs-triage`";
  const missing = (issue.body ?? "").trim().length < 20
    ? "\n\nCould you add a few more details (what you did, what you expected, what happened)?"
    : "";
  const reply =
    `Thanks @${issue.user.login} for opening #${issue.number} in ${repository.full_name}! ` +
    `This looks like: ${guess}. A maintainer will have a look soon.${missing}`;
  return { reply, labels, issue: issue.number };
}
