"""Verifiable task families for measuring the online loop on tasks nobody tuned it for.

Each family (``arithmetic``, ``shift``, ``extract``) generates its prompts from a seed and judges responses
with a judge that names the first wrong part (with error spans, or — ``spans=False`` — the same words without
them, as most users' judges are) and gives the corrected response. :func:`get_task` builds one by name;
``cutalign experiment --task NAME`` and ``cutalign tasks export`` use it. The counting demo
(``cutalign.demo.task``) was designed together with the method; these were not.
"""

from __future__ import annotations

from cutalign.tasks.family import FAMILIES, GeneratedTask, get_task

__all__ = ["FAMILIES", "GeneratedTask", "get_task"]
