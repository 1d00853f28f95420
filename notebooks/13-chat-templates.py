# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 13 — Chat templates: what a chat model actually reads
#
# A chat model was fine-tuned on conversations written in one exact format. SmolLM2 uses ChatML:
# every turn is `<|im_start|>role\ncontent<|im_end|>\n`. The format ships inside the model file as a
# Jinja template; we render it, look at the generation prompt, and see why it must run in a
# sandbox. Lesson: `lessons/13-chat-templates.md`.

# %%
import os
import sys
import time
from pathlib import Path

try:
    import litetorch  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`: use the repo next to this notebook
    sys.path.insert(0, str(Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))
from litetorch.errors import TokenizerError  # noqa: E402
from litetorch.io.gguf import GGUFFile  # noqa: E402
from litetorch.tokenizer import Tokenizer  # noqa: E402

MODEL = Path(os.environ.get("LITETORCH_MODEL") or
             Path(os.environ.get("LITETORCH_HOME") or Path.home() / ".cache" / "litetorch")
             / "SmolLM2-135M-Instruct.Q4_1.gguf")
if not MODEL.is_file():
    print(f"SKIP: model file not found at {MODEL}.\n"
          "Set LITETORCH_MODEL or run `python -c 'from litetorch.io.hub import default_model_path as d; d()'`.")
    sys.exit(0)

tok = Tokenizer.from_gguf_metadata(GGUFFile(MODEL).metadata)
print(tok)

# %% [markdown]
# ## The template, as the model file stores it

# %%
print(tok.chat_template)

# %% [markdown]
# ## Rendering a conversation
#
# With no system message the template inserts its own ("You are a helpful AI assistant named
# SmolLM..."), the one the model saw during fine-tuning.

# %%
conversation = [{"role": "user", "content": "What do whales eat?"}]
prompt = tok.apply_chat_template(conversation, add_generation_prompt=True)
print(prompt)

# %% [markdown]
# ## The generation prompt
#
# `add_generation_prompt=True` appends the *header* of an assistant turn, `<|im_start|>assistant\n`.
# The model then continues with the reply and ends it with `<|im_end|>` — the EOS id a generation
# loop stops on. Without the header, the most likely continuation is another `<|im_start|>`, and the
# model may well write the next *user* turn itself.

# %%
without = tok.apply_chat_template(conversation, add_generation_prompt=False)
print(repr(prompt[len(without):]))
assert prompt == without + "<|im_start|>assistant\n"

ids = tok.apply_chat_template(conversation, tokenize=True)
print(len(ids), "tokens:", [tok.id_to_token(i) for i in ids][-12:])
header = tok.encode("<|im_start|>assistant\n")
print("generation prompt ids:", header, [tok.id_to_token(i) for i in header])   # 'assistant' is 2 tokens here
assert ids[-len(header):] == header
print("stop on:", {i: tok.id_to_token(i) for i in sorted(tok.eos_token_ids)})

# %% [markdown]
# ## A multi-turn conversation with a system message

# %%
chat = [
    {"role": "system", "content": "You are a marine biologist. Answer in one sentence."},
    {"role": "user", "content": "What do whales eat?"},
    {"role": "assistant", "content": "Most baleen whales eat krill 🦐 and small fish."},
    {"role": "user", "content": "And sperm whales?"},
]
print(tok.apply_chat_template(chat))

# %% [markdown]
# ## Same text as HF transformers
#
# HF renders the same template with the same Jinja settings (sandboxed, `trim_blocks`,
# `lstrip_blocks`). Loading HF's tokenizer from the GGUF takes ~15 s.

# %%
try:
    from transformers import AutoTokenizer
except ImportError:
    AutoTokenizer = None
    print("SKIP: transformers is not installed; not comparing with HF apply_chat_template.")

if AutoTokenizer is not None:
    t0 = time.perf_counter()
    hf = AutoTokenizer.from_pretrained(str(MODEL.parent), gguf_file=MODEL.name)
    print(f"HF tokenizer loaded in {time.perf_counter() - t0:.1f} s")
    for messages in (conversation, chat):
        for gen in (True, False):
            ours = tok.apply_chat_template(messages, add_generation_prompt=gen)
            theirs = hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
            assert ours == theirs, (ours, theirs)
            assert tok.encode(ours) == hf.encode(theirs, add_special_tokens=False)
    print("litetorch == HF apply_chat_template (text and ids) on 4 renderings")

# %% [markdown]
# ## Why the sandbox
#
# A template is a program written by whoever made the model file. Jinja expressions can walk
# Python's object graph: from a string to its class, to `object`, to every class loaded in the
# process (and from there to `os.system`). A plain `jinja2.Template` happily follows:

# %%
import jinja2  # noqa: E402

probe = "{{ ''.__class__.__mro__ }}"
print("plain jinja2:", jinja2.Template(probe).render())

# %% [markdown]
# The tokenizer compiles templates in `ImmutableSandboxedEnvironment`, like HF: attributes starting
# with `_` are refused, and so are methods that mutate (`list.append`), so a template cannot change
# the conversation it is given either.

# %%
for source in [probe, "{{ messages.append({'role': 'user', 'content': 'injected'}) }}"]:
    tok.chat_template = source
    try:
        tok.apply_chat_template(conversation)
        raise AssertionError("the sandbox should have refused " + source)
    except TokenizerError as e:
        print("sandbox:", e)
assert conversation == [{"role": "user", "content": "What do whales eat?"}]

# %% [markdown]
# Templates can also reject a conversation on purpose with `raise_exception(...)`:

# %%
tok.chat_template = ("{% if messages[-1]['role'] != 'user' %}"
                     "{{ raise_exception('last turn must be the user') }}{% endif %}")
try:
    tok.apply_chat_template([{"role": "assistant", "content": "hi"}])
except TokenizerError as e:
    print(e)
