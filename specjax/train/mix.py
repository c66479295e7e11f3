"""The training prompt mix: every Spec-Bench task type, none of Spec-Bench's prompts.

    python -m specjax.train.mix build [--per-type N] [--batch B] [--minutes M]   # generate (resumable), then assemble
    python -m specjax.train.mix assemble                                         # only assemble, print the counts

Two kinds of source:
- the prompt files in ../shared/data/train-prompts (GSM8K train: MIT; GPTeacher: MIT; self-instruct:
  Apache-2.0), each record given a task type;
- prompts the target writes itself, generated here with specjax on the target (SmolLM2-135M-Instruct by
  default), sampled at temperature 1, top-p 0.95: Magpie requests (the chat template's user prefix alone,
  Xu et al. 2024), short factual questions, STEM / humanities questions and puzzles on seeded topics,
  news-style articles (then "Summarize: <article>"), passages and a question about each (then QA over
  the passage);
- German for translation ("Translate German to English: <text>"): PostgreSQL's German message
  catalogue as installed by Debian's postgresql-15 (PostgreSQL licence). The target's own German
  paragraphs (kind "german", only with --kinds) were tried and are mostly not German at 135M.
Generated items are appended to data/mix/generated.jsonl (one line each, with the model fingerprint and
seed), so a killed build resumes and a later build (say on a GPU, with a larger --per-type) grows it.
`assemble` then writes specjax/data/mix.jsonl.gz (package data, licences beside it): every record
deduplicated against Spec-Bench by word 13-grams (only its dev half is on this machine:
../shared/data/specbench/dev.jsonl) and against the other records, in a seeded order interleaved across
task types, so any prefix of it is balanced.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pathlib
import re
import sys
import time

import numpy as np

from specjax.train.store import PACKAGED, load_mix as load  # noqa: F401 (load: the mix reader)

ROOT = pathlib.Path(__file__).resolve().parents[2]          # the checkout
GENERATED = ROOT / "data" / "mix" / "generated.jsonl"
SPECBENCH = ROOT.parent / "shared" / "data" / "specbench" / "dev.jsonl"
NGRAM = 13
SEED = 0

# Task types, in Spec-Bench's terms: MT-bench's eight categories (multi-turn), translation, summarization,
# qa, math_reasoning, rag.
TASKS = ("multi_turn", "writing_roleplay", "reasoning", "coding", "extraction", "stem_humanities", "chat",
         "factual_qa", "math_word", "translation", "summarization", "rag")

# train-prompts file (data.SOURCES) -> task type; self-instruct rows (None) are split by a keyword rule.
FILES = {"gsm8k_train.jsonl": "math_word", "gpteacher_codegen-instruct.json": "coding",
         "gpteacher_roleplay-simple-deduped-roleplay-instruct.json": "writing_roleplay",
         "gpteacher_toolformer-dedupe-only-dataset.json": "extraction",
         "selfinstruct_user_oriented_instructions.jsonl": None, "selfinstruct_seed_tasks.jsonl": None}
LICENCES = {"gsm8k": "LICENSE.gsm8k.MIT", "gpteacher": "LICENSE.gpteacher.MIT",
            "selfinstruct": "LICENSE.selfinstruct.Apache2"}

SUBJECTS = (
    "volcanoes", "honeybees", "the Roman Empire", "solar panels", "coral reefs", "the printing press", "jazz music",
    "black holes", "vaccines", "the stock market", "ancient Egypt", "electric cars", "rainforests", "chess",
    "the human heart", "photosynthesis", "the French Revolution", "wind turbines", "earthquakes", "coffee farming",
    "public libraries", "the Silk Road", "antibiotics", "glaciers", "the internet", "democracy", "bridges",
    "the moon landing", "recycling", "migratory birds", "the Renaissance", "plate tectonics", "bread baking",
    "city parks", "the water cycle", "robotics", "the Olympic Games", "Shakespeare", "deserts", "railways",
    "quantum computers", "sleep", "the Great Wall of China", "inflation", "octopuses", "renewable energy",
    "the immune system", "medieval castles", "space telescopes", "rice farming", "climate change", "penguins",
    "the Industrial Revolution", "hurricanes", "classical music", "cybersecurity", "the Amazon river", "dinosaurs",
    "marathon running", "nuclear power", "ancient Greece", "bicycles", "mushrooms", "the periodic table",
    "language learning", "tea", "satellites", "the Cold War", "urban gardens", "wolves", "electricity",
)
THEMEN = (
    "das Wetter", "einen Ausflug in die Berge", "die Stadt Berlin", "das Fahrrad", "eine Zugreise", "den Wald",
    "die Schule", "das Kochen", "den Fußball", "die Musik", "das Meer", "ein Buch", "die Arbeit", "den Winter",
    "den Sommer", "die Familie", "das Internet", "einen Hund", "den Markt", "das Theater", "die Wahl",
    "die Wirtschaft", "das Krankenhaus", "die Umwelt", "ein Konzert", "den Flughafen", "die Universität",
    "das Museum", "einen Garten", "die Polizei", "das Rathaus", "die Bahn", "ein Restaurant", "die Zeitung",
)
FOLLOW_UPS = (
    "Now rewrite your answer in fewer than 50 words.", "Can you give a concrete example?",
    "Explain that to a ten-year-old.", "What are the weaknesses of your answer?",
    "Turn your answer into a bulleted list.", "Now write it in a formal tone.",
    "Summarize your answer in one sentence.", "What would change if the situation were reversed?",
)

# Generated types: name -> (task, instruction template or None for Magpie, max new tokens, follow-up stage).
GENERATED_TYPES = {   # "german" is made only when asked (--kinds): see generated_records
    "magpie": ("chat", None, 64, None),
    "factual_qa": ("factual_qa", "Write one short trivia question about {s}. Write only the question.", 40, None),
    "stem_humanities": ("stem_humanities", "Write one question a curious student might ask a teacher about {s}. "
                        "Write only the question.", 48, None),
    "reasoning": ("reasoning", "Write a short logic puzzle or riddle involving {s}. Write only the puzzle.", 96, None),
    "article": ("summarization", "Write a short news article about {s}.", 192, None),
    "passage": ("rag", "Write an informative paragraph about {s}.", 160, "question"),
    "german": ("translation", "Schreibe einen kurzen Absatz auf Deutsch über {t}. Schreibe nur auf Deutsch.", 96, None),
}
QUESTION = "Write one question that can be answered from this paragraph. Write only the question.\n\n{p}"


# ----------------------------------------------------------------------------- n-grams

def words(text: str) -> list[str]:
  return re.findall(r"\w+", text.lower())


def ngrams(text: str, n: int = NGRAM) -> set[tuple]:
  w = words(text)
  return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def specbench_ngrams(path=SPECBENCH, n: int = NGRAM) -> set[tuple]:
  """Word n-grams of every turn of every Spec-Bench prompt in `path` (empty when the file is absent)."""
  p = pathlib.Path(path)
  out: set[tuple] = set()
  if p.is_file():
    for line in p.read_text(encoding="utf-8").splitlines():
      if line.strip():
        for turn in json.loads(line)["turns"]:
          out |= ngrams(turn, n)
  return out


# ----------------------------------------------------------------------------- file records

def _selfinstruct_task(text: str) -> str:
  t = text.lower()
  if re.search(r"\b(code|program|function|python|sql|javascript|regex)\b", t):
    return "coding"
  if re.search(r"\b(extract|list all|find all|identify|classify|parse|table)\b", t):
    return "extraction"
  if re.search(r"\b(story|poem|write|essay|letter|email|pretend|imagine)\b", t):
    return "writing_roleplay"
  return "reasoning"


def file_records(directory) -> list[dict]:
  """{"id", "task", "source", "turns": [text]} for every usable row of the train-prompts files (read by
  data.training_prompts, whose record ids this keeps)."""
  from specjax.train import data
  out = []
  for r in data.training_prompts(directory):
    name = r.id.rsplit(":", 1)[0]
    task = FILES[name] or _selfinstruct_task(r.prompt)
    out.append({"id": r.id, "task": task, "source": name.split("_")[0], "turns": [r.prompt]})
  return sorted(out, key=lambda r: (r["id"].rsplit(":", 1)[0], int(r["id"].rsplit(":", 1)[1])))


GERMAN_MO = pathlib.Path("/usr/share/locale/de/LC_MESSAGES/postgres-15.mo")
FILLERS = ("kunden", "bestellungen", "42", "berlin", "preis", "7", "archiv", "2024")


def german_records(mo=GERMAN_MO, n: int = 600, seed: int = SEED) -> list[dict]:
  """n translation prompts from PostgreSQL's German message catalogue (Debian package postgresql-15,
  PostgreSQL licence: LICENSE.postgresql): messages of 8+ words, mostly not SQL keywords, their
  printf fields filled with seeded words; [] when the catalogue is not installed."""
  import gettext
  mo = pathlib.Path(mo)
  if not mo.is_file():
    return []
  with open(mo, "rb") as f:
    cat = gettext.GNUTranslations(f)._catalog
  rng = np.random.default_rng(seed + 11)
  good = []
  for key, text in sorted((k, v) for k, v in cat.items() if isinstance(k, str) and k and isinstance(v, str)):
    w = re.findall(r"[A-Za-zÄÖÜäöüß]+", text)
    if len(w) < 8 or sum(x.isupper() and len(x) > 1 for x in w) > len(w) / 5 or "\n" in text.strip():
      continue
    good.append((key, text))
  out = []
  for j in rng.permutation(len(good))[:n]:
    key, text = good[j]
    filled = re.sub(r"%[-+ #0-9.*]*l{0,2}[a-zA-Z]", lambda m: FILLERS[int(rng.integers(len(FILLERS)))], text)
    out.append({"id": f"postgres-de:{hashlib.sha1(key.encode()).hexdigest()[:12]}", "task": "translation",
                "source": "postgresql", "turns": ["Translate German to English: " + filled.strip()]})
  return out


def multi_turn(records: list[dict], n: int, seed: int = SEED) -> list[dict]:
  """n two-turn conversations: a first turn from `records` (self-instruct and Magpie requests) and a
  follow-up from FOLLOW_UPS, chosen by a seeded generator."""
  pool = [r for r in records if r["source"] in ("selfinstruct", "magpie")]
  if not pool:
    return []
  rng = np.random.default_rng(seed + 7)
  pick = rng.permutation(len(pool))[:n]
  return [{"id": f"multi:{pool[j]['id']}", "task": "multi_turn", "source": pool[j]["source"],
           "turns": [pool[j]["turns"][0], FOLLOW_UPS[int(rng.integers(len(FOLLOW_UPS)))]]} for j in pick]


# ----------------------------------------------------------------------------- generated records

def _read_log(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  data = path.read_bytes()
  end = data.rfind(b"\n") + 1
  return [json.loads(l) for l in data[:end].decode("utf-8").splitlines() if l.strip()]


def _append(path: pathlib.Path, rows: list[dict]):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def plan(kind: str, n: int, seed: int = SEED) -> list[dict]:
  """The first n items of generated type `kind`: {"key", "instruction"} in a fixed seeded order
  (subject x variant), so a larger n extends the same list."""
  task, template, _, _ = GENERATED_TYPES[kind]
  topics = THEMEN if kind == "german" else SUBJECTS
  order = np.random.default_rng(seed + sum(map(ord, kind))).permutation(len(topics))
  out = []
  for i in range(n):
    t = topics[order[i % len(topics)]]
    out.append({"key": f"{kind}:{i}", "instruction": None if template is None else template.format(s=t, t=t)})
  return out


def user_prefix(target) -> list[int]:
  """Token ids of the chat template up to where the user's text begins (Magpie's input)."""
  tok = target.tokenizer
  mark = "\ue000MAGPIE\ue000"
  text = tok.render_chat([{"role": "user", "content": mark}])
  return tok.encode(text[:text.index(mark)])


def _clean(text: str) -> str:
  return text.strip().strip('"').strip()


def generate(target, *, per_type: int = 300, batch: int = 16, deadline: float | None = None,
             log_path: pathlib.Path = GENERATED, kinds=tuple(GENERATED_TYPES), progress=print) -> int:
  """Generates up to per_type items of each kind in `kinds` into log_path (appending; items already
  there are skipped), one batch of each kind in turn so every kind grows together. Stops starting
  batches after `deadline` (time.time()). Returns how many items were added."""
  from specjax.program import Program, Settings, encode_prompts
  program = Program(target)

  def sample(texts, max_new_tokens, seed):     # temperature 1, top-p 0.95 (Magpie)
    return program.generate(encode_prompts(target, texts, True, False),
                            Settings.make(max_new_tokens=max_new_tokens, temperature=1.0, top_p=0.95, seed=seed))

  fp = target.fingerprint
  done = {r["key"] for r in _read_log(log_path) if r.get("model") == fp}
  queues = {k: [it for it in plan(k, per_type) if it["key"] not in done] for k in kinds}
  prefix = user_prefix(target)
  eos = set(target.tokenizer.eos_ids)
  added, t0 = 0, time.perf_counter()
  while any(queues.values()):
    for kind in kinds:
      if deadline is not None and time.time() > deadline:
        return added
      chunk, queues[kind] = queues[kind][:batch], queues[kind][batch:]
      if not chunk:
        continue
      task, template, max_new, then = GENERATED_TYPES[kind]
      seed = int(hashlib.sha1(chunk[0]["key"].encode()).hexdigest()[:8], 16)
      prompts = [prefix if template is None else it["instruction"] for it in chunk]
      g = sample(prompts, max_new, seed)
      texts = [_clean(target.tokenizer.decode([t for t in ids if t not in eos])) for ids in g.token_ids]
      rows = [{"key": it["key"], "model": fp, "seed": seed, "instruction": it["instruction"], "text": tx,
               "finished": len(ids) < max_new} for it, tx, ids in zip(chunk, texts, g.token_ids)]
      if then == "question":
        ok = [r for r in rows if len(words(r["text"])) >= 20]
        if ok:
          q = sample([QUESTION.format(p=r["text"]) for r in ok], 40, seed + 1)
          for r, ids in zip(ok, q.token_ids):
            r["question"] = _clean(target.tokenizer.decode([t for t in ids if t not in eos]))
      _append(log_path, rows)
      added += len(rows)
      if progress:
        progress(f"mix: {kind} +{len(rows)} ({added} new, {time.perf_counter() - t0:.0f} s)")
  return added


def generated_records(log_path: pathlib.Path = GENERATED, *, target_german: bool = False) -> list[dict]:
  """Prompts made from the generation log (every model's rows; a row the target did not finish, or
  too short to be a request, is dropped)."""
  out = []
  for r in _read_log(log_path):
    kind = r["key"].split(":")[0]
    task = GENERATED_TYPES[kind][0]
    text = r["text"]
    n = len(words(text))
    if kind in ("magpie", "factual_qa", "stem_humanities", "reasoning"):
      if not r["finished"] or n < 4 or n > 120:
        continue
      prompt = text
    elif kind == "article":
      if n < 40:
        continue
      prompt = "Summarize: " + text
    elif kind == "passage":
      # The target's first question sentence (at 135M its reply is often chatty around it).
      m = re.search(r"(?:^|(?<=[\s:\"]))([A-Z][^?\n:\"]{10,250}\?)", r.get("question", ""))
      q = m.group(1) if m else ""
      if n < 20 or not 4 <= len(words(q)) <= 40:
        continue
      prompt = f"{text}\n\nAnswer the question using the paragraph above: {q}"
    elif kind == "german":
      # SmolLM2-135M's German at temperature 1 is mostly not German (measured: none of 16 paragraphs read as
      # proper German): kept in the log for a larger target, left out of the mix unless asked for.
      if n < 8 or not target_german:
        continue
      prompt = "Translate German to English: " + text
    else:
      continue
    out.append({"id": f"{r['key']}@{r['model']}", "task": task, "source": "magpie" if kind == "magpie" else "target",
                "turns": [prompt]})
  return out


# ----------------------------------------------------------------------------- assemble

def assemble(prompts_dir, *, log_path: pathlib.Path = GENERATED, specbench=SPECBENCH, german=GERMAN_MO,
             target_german: bool = False, multi_turns: int = 400, seed: int = SEED) -> tuple[list[dict], dict]:
  """(records, report): file + German catalogue + generated + multi-turn records, deduplicated (exact
  text, then any record sharing a word 13-gram with Spec-Bench), in a seeded order interleaved across
  task types."""
  recs = file_records(prompts_dir) + german_records(german, seed=seed) + generated_records(log_path, target_german=target_german)
  recs += multi_turn(recs, multi_turns, seed)
  bench = specbench_ngrams(specbench)
  seen, out, dropped = set(), [], {"duplicate": 0, "specbench": 0}
  for r in recs:
    norm = " ".join(words(" ".join(r["turns"])))
    if norm in seen:
      dropped["duplicate"] += 1
      continue
    seen.add(norm)
    if any(ngrams(t) & bench for t in r["turns"]):
      dropped["specbench"] += 1
      continue
    out.append(r)
  by_task = {t: [r for r in out if r["task"] == t] for t in TASKS}
  rng = np.random.default_rng(seed)
  for t in TASKS:
    by_task[t] = [by_task[t][i] for i in rng.permutation(len(by_task[t]))]
  mixed = []
  for i in range(max(map(len, by_task.values()))):
    mixed.extend(by_task[t][i] for t in TASKS if i < len(by_task[t]))
  report = {"counts": {t: len(by_task[t]) for t in TASKS}, "dropped": dropped, "total": len(mixed),
            "specbench": str(specbench) if pathlib.Path(specbench).is_file() else None}
  return mixed, report


def write(records: list[dict], path: pathlib.Path = PACKAGED):
  path.parent.mkdir(parents=True, exist_ok=True)
  body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")
  tmp = path.with_suffix(".tmp")
  with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=9) as f:
    f.write(body)                                     # no name, mtime 0: the same records give the same bytes
  os.replace(tmp, path)


def print_report(report: dict, out=sys.stdout):
  print(f"{'task type':<18} prompts", file=out)
  for t, n in report["counts"].items():
    print(f"{t:<18} {n:>7}", file=out)
  print(f"{'total':<18} {report['total']:>7}", file=out)
  print(f"dropped: {report['dropped']['duplicate']} exact duplicates, {report['dropped']['specbench']} sharing a "
        f"{NGRAM}-gram with Spec-Bench ({report['specbench'] or 'NO Spec-Bench file found: not deduplicated'}; "
        "the other half of Spec-Bench is not on this machine)", file=out)


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m specjax.train.mix", description=__doc__.split("\n\n")[0])
  ap.add_argument("command", choices=["build", "assemble"])
  ap.add_argument("--prompts", default=str(ROOT.parent / "shared" / "data" / "train-prompts"), metavar="DIR")
  ap.add_argument("--per-type", type=int, default=300, help="generated items per generated type (grows the log)")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--minutes", type=float, default=None, help="stop starting generation batches after this long")
  ap.add_argument("--model", default="default")
  ap.add_argument("--kinds", default=",".join(k for k in GENERATED_TYPES if k != "german"))
  a = ap.parse_args(argv)
  if a.command == "build":
    from specjax.io import load
    target = load(a.model)
    deadline = None if a.minutes is None else time.time() + 60 * a.minutes
    generate(target, per_type=a.per_type, batch=a.batch, deadline=deadline, kinds=tuple(a.kinds.split(",")))
  records, report = assemble(a.prompts)
  write(records)
  print_report(report)
  print(f"wrote {PACKAGED} ({PACKAGED.stat().st_size / 1e6:.2f} MB, {len(records)} records)")


if __name__ == "__main__":
  main()
