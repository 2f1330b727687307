"""The lm-evaluation-harness (0.4.x) model adapter: any harness task on a samoe-jax checkpoint.

  pip install -e '.[lm_eval]'
  python -m samoe_jax.evaluation.harness run --model samoe --model_args workdir=runs/tiny_samoe,checkpoint=latest \
      --tasks piqa,hellaswag --num_fewshot 0          # the harness's own CLI with the 'samoe' model registered

or from Python:

  import lm_eval, samoe_jax.evaluation.harness  # registers 'samoe'
  lm_eval.simple_evaluate(model='samoe', model_args='workdir=runs/tiny_samoe', tasks=['piqa'])

model_args: workdir (required: a samoe_jax.train run directory), checkpoint ('latest' or a step), config (a
config file; default: the run's config.json), batch_size. The harness's requests go to the same
`ModelBackend` that `python -m samoe_jax.evaluate` uses, so both report identical numbers for identical
requests (tests/test_evaluate.py runs the harness offline and checks this).
"""

from __future__ import annotations

import sys
from typing import Any

from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from samoe_jax.evaluation.requests import (Backend, GenerationRequest, LoglikelihoodRequest,
                                           RollingLoglikelihoodRequest)
from samoe_jax import cli
from samoe_jax.evaluation.backend import load_backend

_IGNORED_HARNESS_ARGS = ('device', 'max_batch_size')


def generation_request(context: str, gen_kwargs: dict[str, Any]) -> GenerationRequest:
  """The harness's (context, gen_kwargs) as a greedy GenerationRequest; sampling is refused."""
  kwargs = dict(gen_kwargs)
  if kwargs.pop('do_sample', False) or float(kwargs.pop('temperature', 0.0) or 0.0) > 0.0:
    raise ValueError(f'samoe harness model: only greedy generation is supported, got {gen_kwargs}')
  until = kwargs.pop('until', None) or ()
  until = (until,) if isinstance(until, str) else tuple(until)
  max_gen_toks = int(kwargs.pop('max_gen_toks', 256))
  return GenerationRequest(context=context, until=until, max_gen_toks=max_gen_toks)


@register_model('samoe')
class SamoeLM(LM):
  """lm_eval LM over a samoe-jax Backend (built from a run directory unless one is given)."""

  def __init__(self, workdir: str | None = None, checkpoint: str = 'latest', config: str | None = None,
               batch_size: int | str = 16, backend: Backend | None = None, **harness_args: Any):
    super().__init__()
    unknown = sorted(set(harness_args) - set(_IGNORED_HARNESS_ARGS))
    if unknown:
      raise ValueError(f'samoe harness model: unknown model_args {unknown}; use workdir, checkpoint, config, '
                       'batch_size')
    if backend is None:
      if not workdir:
        raise ValueError('samoe harness model: give model_args workdir=<a samoe_jax.train run directory>')
      size = 16 if batch_size in (None, 'auto') else int(batch_size)
      backend = load_backend(workdir, checkpoint=str(checkpoint), config_path=config, batch_size=size)
    self.backend = backend

  @classmethod
  def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None
                          ) -> 'SamoeLM':
    """model_args win over the harness's own --batch_size / --device defaults (no duplicate keywords)."""
    extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
    return cls(**arg_dict, **extra)

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None) -> 'SamoeLM':
    from lm_eval import utils  # pylint: disable=g-import-not-at-top
    return cls.create_from_arg_obj(utils.simple_parse_args_string(arg_string), additional_config)

  def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
    return self.backend.loglikelihood([LoglikelihoodRequest(*r.args) for r in requests])

  def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
    return self.backend.loglikelihood_rolling([RollingLoglikelihoodRequest(r.args[0]) for r in requests])

  def generate_until(self, requests: list[Instance]) -> list[str]:
    return self.backend.generate_until([generation_request(*r.args) for r in requests])


EVALUATOR_BATCH_SIZE = 16   # python -m samoe_jax.evaluate --batch_size default


def main() -> None:
  """The harness's command line with the 'samoe' model registered (importing this module registered it).

  Without --batch_size it runs at the evaluator's batch size (16), not lm-eval's default 1, so the documented
  command gives the evaluator's numbers bit for bit (batching changes scores only within float32 rounding)."""
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=g-import-not-at-top
  if not any(a == '--batch_size' or a.startswith('--batch_size=') or a == '-b' for a in sys.argv[1:]):
    sys.argv += ['--batch_size', str(EVALUATOR_BATCH_SIZE)]
  with cli.user_errors('samoe_jax.evaluation.harness'):   # bad model_args, a missing run: one message, exit 1
    cli_evaluate()


if __name__ == '__main__':
  sys.exit(main())
