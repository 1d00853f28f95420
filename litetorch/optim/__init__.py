"""litetorch.optim: update rules, learning-rate schedules and gradient clipping (torch.optim's names).

    opt = optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    sched = optim.lr_scheduler.CosineWithWarmup(opt, warmup_steps=100, total_steps=2000)
    for x, y in batches:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
"""
from . import lr_scheduler
from .adam import Adam, AdamW
from .clip import clip_grad_norm_
from .lr_scheduler import CosineWithWarmup, LambdaLR, get_cosine_schedule_with_warmup
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm_", "lr_scheduler", "LambdaLR", "CosineWithWarmup",
           "get_cosine_schedule_with_warmup"]
