"""The reward wing: how a response is scored, from the data's own rule or a user function to FAST's reward terms.

- `scoring`: one generation chunk to scored groups (the step calls `score_chunk`), over all ranks.
- `builtin`: the built-in scorer (correct and formatted bits by the task's rule or the math grader) and lengths.
- `user`: user reward functions (`reward.function`): loaded by import path, called per chunk, their values checked.
- `worker`: a user function under `reward.timeout_s`, in a forked child that can be killed.
- `math_grader`: the math grader (answer extraction, exact then symbolic comparison, the think/answer format).
- `verifier`: math-verify's symbolic check in a pool of subprocesses, under a timeout from any thread.

FAST-GRPO's difficulty-aware length reward itself is an algorithm: `fastslow.thinking_reward`.
"""
