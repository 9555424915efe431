"""One online iteration (docs/method.md §6) as plain functions: the KFP components, the demo and
``cutalign run`` all call these, so the pipeline and the laptop run the same code.

=====================  ======================================================  ==========================
step                   function                                                module
=====================  ======================================================  ==========================
publish prompts        ``publish_prompts(source, i, store=, kafka=)``          ``prompts``
wait for judging       ``wait_for_iteration(store, i, target, kafka=, ...)``   ``progress``
seal                   ``seal(store, i, builder_url=)``                        ``seal``
train (in-process)     ``train_local(trainer, manifest_uri, policy_uri, i)``   ``train``
train (cluster)        ``train_on_cluster(api, trainer, ..., launcher=)``      ``cluster``
evaluate + gate        ``assess_candidate(store, iteration=, ...)``            ``assess`` (``evaluate``)
promote + roll out     ``publish_release(store, iteration=, ...)``             ``promote``
=====================  ======================================================  ==========================

Every step is idempotent, so a retried pipeline task (or a re-run demo) continues instead of duplicating:
the prompt set is recorded once, a sealed iteration stays sealed, training resumes from its checkpoints, a
cluster job is found by name, and a release is recorded once per iteration.
"""
