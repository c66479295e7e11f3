"""The llama.cpp peer's worker process (specjax.bench.llamacpp starts one per peer method).

Run by path with one JSON job as its argument: {"model", "n_ctx", "lookup": [num_tokens, max_ngram] or null,
"temperature", "seed", "eos_ids"}. It imports only the standard library and llama_cpp (no JAX), prints
{"ready": true, "info": {...}} once the model is loaded, then answers each request line on stdin,
{"ids": [...], "max_new_tokens": n}, with one line {"token_ids", "new_tokens", "target_forwards", "wall_s"}
or {"error": "..."}. A crash in llama.cpp (illegal instruction, segfault) ends this process only."""
import json
import os
import sys
import time


def main(job: dict):
  replies = os.fdopen(os.dup(1), "w")   # replies go to the real stdout; anything else printed goes to stderr
  os.dup2(2, 1)

  def reply(obj):
    replies.write(json.dumps(obj) + "\n")
    replies.flush()

  import llama_cpp
  from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

  lookup = job["lookup"]
  draft = LlamaPromptLookupDecoding(num_pred_tokens=lookup[0], max_ngram_size=lookup[1]) if lookup else None
  threads = os.cpu_count() or 1
  # logits_all with a draft model: llama-cpp-python 0.3.36 then keeps logits for every position, but sizes its
  # scores buffer by the argument, not by that (n_batch rows): past 512 tokens prompt lookup fails without it.
  llm = llama_cpp.Llama(job["model"], n_ctx=job["n_ctx"], n_threads=threads, n_threads_batch=threads,
                        draft_model=draft, logits_all=draft is not None, seed=job["seed"], verbose=False)
  forwards = [0]
  evaluate = llm.eval

  def counted_eval(tokens):             # one eval = one target forward (the prompt's, or a step's 1 + drafts)
    forwards[0] += 1
    evaluate(tokens)

  llm.eval = counted_eval
  reply({"ready": True, "info": {"llama_cpp": llama_cpp.__version__, "n_threads": threads,
                                 "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}})
  eos = set(job["eos_ids"])
  temp = float(job["temperature"])
  for line in sys.stdin:
    req = json.loads(line)
    try:
      llm.reset()                       # n_tokens = 0: no KV-cache reuse between prompts (no prefix-match hit)
      llm.set_seed(job["seed"])
      forwards[0] = 0
      new = []
      t0 = time.perf_counter()
      # temp 0: llama.cpp's greedy sampler (argmax); top_k/top_p/min_p/penalties are switched off either way.
      for t in llm.generate(req["ids"], temp=temp, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        new.append(int(t))
        if t in eos or len(new) >= req["max_new_tokens"]:
          break
      wall = time.perf_counter() - t0
      reply({"token_ids": new, "new_tokens": len(new), "target_forwards": forwards[0], "wall_s": wall})
    except Exception as e:              # a Python-level failure: reported, the worker stays up
      reply({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
