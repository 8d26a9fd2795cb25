"""AdamW over a model's parameter dict, calling the backend's adamw op one tensor at a time.

State (m, v per parameter, the step count) is plain arrays so checkpoints can store it.
"""
from .reference.adamw import decays


class AdamW:
    def __init__(self, params, backend, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                 lr_scale=None):
        self.params = params                  # the model's dict, updated in place
        # {name: factor}: a parameter's learning rate is lr * factor (1 for names not in it),
        # e.g. a smaller one for a pretrained body than for a new head
        self.lr_scale = dict(lr_scale or {})
        self.be = backend
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        xp = backend.xp
        self.m = {k: xp.zeros_like(p) for k, p in params.items()}
        self.v = {k: xp.zeros_like(p) for k, p in params.items()}
        self.step_count = 0

    def step(self, grads, lr=None, max_grad_norm=None):
        """Clip by global norm (when max_grad_norm is set), then one AdamW update of every
        parameter. Returns the gradient norm before clipping."""
        if set(grads) != set(self.params):
            raise ValueError("grads: keys must match the parameters")
        op = self.be.adamw
        names = list(self.params)
        norm = op.clip_by_global_norm([grads[k] for k in names], max_grad_norm)
        self.step_count += 1
        lr = self.lr if lr is None else lr
        for k in names:
            p = self.params[k]
            op.update(p, grads[k], self.m[k], self.v[k], self.step_count,
                      lr * self.lr_scale.get(k, 1.0), self.betas[0],
                      self.betas[1], self.eps, self.weight_decay if decays(k, p) else 0.0)
        return norm

    def state_dict(self):
        return {"step": self.step_count, "m": self.m, "v": self.v, "lr": self.lr,
                "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def load_state_dict(self, state):
        xp = self.be.xp
        self.step_count = int(state["step"])
        self.m = {k: xp.asarray(state["m"][k]).astype(self.params[k].dtype) for k in self.params}
        self.v = {k: xp.asarray(state["v"][k]).astype(self.params[k].dtype) for k in self.params}
