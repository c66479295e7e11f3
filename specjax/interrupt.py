"""Ctrl-C for the command line: SIGINT ends the process at once, one line on stderr and status 130, whatever
it is doing (importing JAX, compiling, decoding, shutting down).

Imports nothing heavy: the command line installs this before anything starts JAX.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

EXIT_INTERRUPTED = 130


def interrupted():
  """Ends the process now: one line, status 130. os._exit, not sys.exit: a normal interpreter shutdown
  while JAX's compiler and runtime threads are still working can crash (a segfault, status 139)."""
  with contextlib.suppress(Exception):
    sys.stderr.flush()
  with contextlib.suppress(OSError):
    os.write(2, b"specjax: interrupted\n")
  os._exit(EXIT_INTERRUPTED)


@contextlib.contextmanager
def exit_on_interrupt(restore: bool = True):
  """Within: SIGINT (Ctrl-C) calls `interrupted` at once, whatever the program is doing. restore=False
  (the process's own command line) leaves it in place to the end, so a Ctrl-C while the interpreter
  shuts JAX down still exits 130 instead of being printed as "Exception ignored" and exiting 0.

  Python runs signal handlers only between bytecodes of the main thread, so a Ctrl-C during a long XLA
  compile or run would wait for it to finish; the C-level handler also writes the signal number to a
  wake-up pipe, which a watcher thread reads while the main thread is busy in native code."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  r, w = os.pipe()
  os.set_blocking(w, False)
  once = threading.Lock()

  def handle(*_):
    if once.acquire(blocking=False):      # the handler and the watcher may both see the same signal
      interrupted()

  def watch():
    while data := os.read(r, 64):
      if signal.SIGINT in data:
        handle()

  old_handler = signal.signal(signal.SIGINT, handle)
  old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
  watcher = threading.Thread(target=watch, name="specjax-sigint", daemon=True)
  watcher.start()
  try:
    yield
  finally:
    if restore:
      _restore(old_handler, old_fd, w, r, watcher)


def _restore(old_handler, old_fd, w, r, watcher):
  """Puts back the SIGINT handling found before `exit_on_interrupt` and ends its watcher."""
  signal.set_wakeup_fd(old_fd)
  signal.signal(signal.SIGINT, old_handler)
  os.close(w)                             # ends the watcher's read
  watcher.join()
  os.close(r)
