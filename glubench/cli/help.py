"""``glubench --help``: the FFN variants and the experiments, for Hydra's help template.

``conf/hydra/help/glubench.yaml`` (Hydra's ``hydra.help.template``) reads them through two OmegaConf
resolvers, so that the help lists what the code and ``conf/experiment/`` hold, not a copy that can drift:
``${glubench.help_ffn:}`` (the variant table of :mod:`glubench.nn.config`) and
``${glubench.help_experiments:}`` (each experiment's name and the first phrase of its leading comment).
No torch here: ``--help`` stays fast.
"""

from __future__ import annotations

import re

from omegaconf import OmegaConf

from glubench.core.paths import CONF_DIR
from glubench.nn.config import FFN_VARIANTS, PAPER_VARIANTS


def ffn_variants() -> str:
    """The ``model.ffn`` choices, non-gated then gated, and the paper's eight (Shazeer 2020, Table 1)."""
    plain = [n for n, v in FFN_VARIANTS.items() if not v.gated]
    gated = [n for n, v in FFN_VARIANTS.items() if v.gated]
    return (f"  non-gated: {' '.join(plain)}   (hidden width d_ff)\n"
            f"  gated:     {' '.join(gated)}   (hidden width ~2/3 d_ff: the same FFN parameters)\n"
            f"  the paper's eight (Shazeer 2020, Table 1): {' '.join(PAPER_VARIANTS)}")


def experiments() -> str:
    """One line per ``conf/experiment/*.yaml``: its name and the first phrase of its leading comment."""
    lines = []
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        comment = []
        for line in path.read_text().splitlines():
            if not line.startswith("#") or line.startswith("#   "):  # the comment ends, or a usage line starts
                break
            if not line.startswith("# @package"):
                comment.append(line.lstrip("# ").strip())
        phrase = re.split(r"(?<=[.?])\s|:\s|;\s", " ".join(comment))[0] if comment else ""
        lines.append(f"  {path.stem:20s} {phrase.rstrip('.')}")
    return "\n".join(lines)


def register() -> None:
    """Register the resolvers ``glubench.help_ffn`` and ``glubench.help_experiments``."""
    OmegaConf.register_new_resolver("glubench.help_ffn", ffn_variants, replace=True)
    OmegaConf.register_new_resolver("glubench.help_experiments", experiments, replace=True)
