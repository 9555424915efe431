"""Typed configuration for every component, read from ``CUTALIGN_<SECTION>_<KEY>`` environment variables.

One settings class per component (kafka, s3, policy, judge, trainer, builder, feedback, platform, ...). The
same keys appear as CLI flags and as Helm values (``kafka.bootstrapServers`` ->
``CUTALIGN_KAFKA_BOOTSTRAP_SERVERS``), so a deployment is configured the same way everywhere. Secrets are
``SecretStr`` with no default in code: they come from the environment (Kubernetes Secrets on a cluster), and
their ``repr``/``str``/logs show ``**********``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cutalign import __version__
from cutalign.errors import UserError


class MissingCredentials(UserError, ValueError):
    """A component needs credentials that the environment does not give (they never have a default)."""


def _section(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=f"CUTALIGN_{prefix}_", extra="forbid", frozen=True)


class KafkaSettings(BaseSettings):
    """Where the bus is and how topics are named and provisioned."""

    model_config = _section("KAFKA")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    client_id: str = Field("cutalign", description="Client id prefix reported to the broker.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol."
    )
    sasl_mechanism: str = Field("SCRAM-SHA-512", description="SASL mechanism when SASL is on.")
    sasl_username: str | None = Field(None, description="SASL user (from a Secret).")
    sasl_password: SecretStr | None = Field(None, description="SASL password (from a Secret, never logged).")
    ssl_ca_location: str | None = Field(
        None,
        description="PEM file of the CA that signed the brokers' certificates (SSL, SASL_SSL; e.g. Strimzi's "
        "cluster CA); None: the system trust store.",
    )
    topic_prompts: str = Field("cutalign.prompts", description="Prompts to generate for.")
    topic_samples: str = Field("cutalign.samples", description="Generated samples to judge.")
    topic_judgments: str = Field("cutalign.judgments", description="Judgments: judge service + production.")
    topic_deadletter: str = Field("cutalign.deadletter", description="Messages that could not be processed.")
    partitions: int = Field(3, ge=1, description="Partitions of each provisioned topic.")
    replication_factor: int = Field(1, ge=1, description="Replication factor of each provisioned topic.")
    session_timeout_ms: int = Field(6000, ge=1000, description="Consumer group session timeout.")
    heartbeat_interval_ms: int = Field(2000, ge=100, description="Consumer group heartbeat interval.")
    max_poll_interval_ms: int = Field(
        300_000, ge=1000, description="A consumer that does not poll this long leaves its group."
    )
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest message produced/fetched.")
    max_text_bytes: int = Field(
        64 * 1024,
        ge=1,
        description="Largest text field (instruction, input, response, judgment) produced or accepted.",
    )

    @model_validator(mode="after")
    def _check_limits(self) -> KafkaSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                "kafka.heartbeat_interval_ms must be at most a third of kafka.session_timeout_ms"
            )
        if self.max_poll_interval_ms < self.session_timeout_ms:
            raise ValueError("kafka.max_poll_interval_ms must be at least kafka.session_timeout_ms")
        # A judgment carries four text fields and the ids around them: every valid one must fit a message.
        if 4 * self.max_text_bytes + 64 * 1024 > self.max_message_bytes:
            raise ValueError(
                f"kafka.max_text_bytes={self.max_text_bytes} is too large for kafka.max_message_bytes="
                f"{self.max_message_bytes}: a judgment holds four text fields, so keep "
                "4 x max_text_bytes + 64 KiB <= max_message_bytes"
            )
        return self


class S3Settings(BaseSettings):
    """The artifact store (MinIO on a cluster, SeaweedFS locally)."""

    model_config = _section("S3")

    endpoint: str = Field("127.0.0.1:8333", description="host:port of the S3 API.")
    access_key: SecretStr | None = Field(None, description="Access key (from a Secret; never in code).")
    secret_key: SecretStr | None = Field(None, description="Secret key (from a Secret; never in code).")

    def credentials(self) -> tuple[str, str]:
        """The key pair, or a clear error saying where it must come from."""
        if self.access_key is None or self.secret_key is None:
            raise MissingCredentials(
                "S3 credentials are not set",
                "export CUTALIGN_S3_ACCESS_KEY and CUTALIGN_S3_SECRET_KEY (on a cluster, from a Secret); for "
                "the embedded platform, `cutalign up` writes them to .cutalign/platform/credentials.env — "
                "`source` that file",
            )
        return self.access_key.get_secret_value(), self.secret_key.get_secret_value()

    secure: bool = Field(False, description="Use https.")
    ca_bundle: str | None = Field(
        None,
        description="PEM file of the CA that signed the endpoint's certificate (secure; e.g. the MinIO "
        "operator's auto-cert CA); None: the public CAs (certifi).",
    )
    region: str = Field("us-east-1", description="Region reported to the store.")
    bucket: str = Field("cutalign", description="Bucket holding every artifact (see README layout).")
    multipart_part_size: int = Field(16 * 1024 * 1024, ge=5 * 1024 * 1024, description="Multipart part size.")


class PolicySettings(BaseSettings):
    """The served policy model and how samples are decoded."""

    model_config = _section("POLICY")

    mode: Literal["embedded", "kserve", "vllm", "tgi"] = Field(
        "embedded",
        description="What serves the policy: cutalign's server (embedded, or inside KServe), vLLM or TGI.",
    )
    url: str = Field("http://127.0.0.1:8080", description="Base URL of TGI / an OpenAI-compatible server.")
    backend: Literal["tgi", "openai"] = Field(
        "openai", description="TGI native generate route, or the OpenAI-compatible chat completions route."
    )
    model_name: str = Field("policy", description="Model name on the server.")
    api_token: SecretStr | None = Field(None, description="Bearer token for the server (from a Secret).")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(4, ge=0, description="Retries on 429/5xx/connection errors, jittered backoff.")
    retry_backoff_s: float = Field(0.5, gt=0, description="First retry delay; doubles per retry (jittered).")
    retry_max_backoff_s: float = Field(10.0, gt=0, description="Longest delay between two retries.")
    max_in_flight: int = Field(8, ge=1, description="Requests in flight at once.")
    max_new_tokens: int = Field(64, ge=1, description="Generation length limit.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding (method default: greedy).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    n: int = Field(1, ge=1, description="Responses per prompt.")
    stop: list[str] = Field(default_factory=list, description="Stop sequences.")
    template: Literal["auto", "plain", "short", "chat"] = Field(
        "auto",
        description="Prompt template (docs/method.md §2): chat sends messages to the chat route; auto "
        "resolves with the tokenizer (or the embedded server's /info).",
    )
    tokenizer: str | None = Field(
        None,
        description="The policy's tokenizer (model directory or hub id): renders chat prompts for the tgi "
        "backend and resolves template=auto.",
    )
    max_prompt_chars: int = Field(8000, ge=1, description="Longer prompts are rejected or truncated.")
    truncate_long_prompts: bool = Field(False, description="Truncate (and record) instead of rejecting.")
    seed: int = Field(0, ge=0, description="Base seed; each sampled response's seed derives from it.")
    release_wait_s: float = Field(
        0.0, ge=0, description="How long to wait for the promoted release to be served before refusing."
    )
    lora_adapters: bool = Field(
        False, description="vllm: release LoRA adapters over the served base, loaded without a restart."
    )

    @model_validator(mode="after")
    def _check_sampling(self) -> PolicySettings:
        if self.n > 1 and not self.do_sample:
            raise ValueError("policy.n > 1 needs policy.do_sample=true (greedy gives n equal responses)")
        return self


class PolicyServerSettings(BaseSettings):
    """The embedded policy server (``python -m cutalign.policy.server``); flags use the same names."""

    model_config = _section("POLICY_SERVER")

    policy_uri: str = Field("", description="Checkpoint to serve: a directory or s3:// prefix (required).")
    base_model_uri: str | None = Field(None, description="Base model of a LoRA adapter (default: from it).")
    policy_model_id: str | None = Field(None, description="model_id of the version (default: URI tail).")
    iteration: int = Field(0, ge=0, description="Iteration that produced the checkpoint (0 = base model).")
    expected_sha256: str | None = Field(None, description="Refuse to start unless the checkpoint hashes so.")
    max_batch_size: int = Field(16, ge=1, description="Most requests decoded together in one batch.")
    max_batch_wait_ms: float = Field(5.0, ge=0, description="How long a batch waits for more requests.")
    default_max_new_tokens: int = Field(64, ge=1, description="max_new_tokens when a request names none.")
    device: str = Field("cpu", description="torch device of the model (cpu, cuda, cuda:1).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Weights dtype.")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's).")
    watch_current: bool = Field(False, description="Hot-reload each new release in policy/current.json.")
    watch_interval_s: float = Field(10.0, gt=0, description="How often policy/current.json is read.")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of POST /v1/policy/load (a Secret; generated at start when unset)."
    )
    load_roots: list[str] = Field(
        default_factory=list,
        description="URI prefixes POST /v1/policy/load may load from (empty: s3://<bucket>/iterations/).",
    )
    host: str = Field("127.0.0.1", description="Address the server binds (0.0.0.0 inside a pod).")


class ModelSyncSettings(BaseSettings):
    """The model sync of vLLM/TGI pods (``python -m cutalign.policy.sync``): releases from S3 to a volume."""

    model_config = _section("MODEL_SYNC")

    base_model_uri: str = Field(
        "", description="s3:// prefix served before the first release; the base LoRA releases apply to."
    )
    models_dir: str = Field("/models", description="Volume releases are synced into (the server reads it).")
    server_url: str = Field("http://127.0.0.1:8080", description="This pod's vLLM (adapters load into it).")
    api_key: SecretStr | None = Field(None, description="vLLM's --api-key, for adapter calls (a Secret).")
    interval_s: float = Field(10.0, gt=0, description="How often policy/current.json is read (--follow).")
    keep_adapters: int = Field(2, ge=1, description="LoRA adapters kept loaded: the current one and older.")
    http_port: int = Field(8081, ge=0, description="Health and metrics port of the --follow sidecar.")


class GeneratorSettings(BaseSettings):
    """The generator service: prompts in, policy samples out."""

    model_config = _section("GENERATOR")

    group_id: str = Field("cutalign-generator", description="Consumer group of the prompts topic.")
    http_port: int = Field(8091, ge=0, description="Health and metrics port (0 picks a free one).")
    iteration: int = Field(
        0, ge=0, description="Generate only for this iteration's prompts (0: follow each prompt's iteration)."
    )
    expected_policy_sha256: str | None = Field(
        None,
        description="Policy checkpoint sha256 to generate from (None: the promoted release in "
        "policy/current.json, or what is served at start-up before the first promotion).",
    )
    batch_size: int = Field(32, ge=1, description="Prompts polled and generated per batch (commit unit).")
    poll_timeout_s: float = Field(1.0, gt=0, description="Longest wait for a batch of prompts.")
    dedupe_window: int = Field(100_000, ge=0, description="Prompt ids remembered to skip redeliveries.")


class JudgeSettings(BaseSettings):
    """Which judge judges samples, and how failures are retried."""

    model_config = _section("JUDGE")

    judge: str = Field(
        "llm", description="Entry point name or `package.module:Class` (default: the paper's LLM judge)."
    )
    options_json: str = Field("{}", description="JSON object of keyword arguments for the judge.")
    judge_id: str | None = Field(None, description="Id written on judgments (default: the judge's own).")
    max_retries: int = Field(3, ge=0, description="Retries of a failing judge call before dead-lettering.")
    backoff_s: float = Field(0.2, ge=0, description="First retry delay; doubles, with jitter.")
    timeout_s: float = Field(30.0, gt=0, description="A judge call slower than this counts as failed.")
    guard: bool = Field(True, description="Veto positives on empty/too-short/template-echo responses.")
    guard_min_chars: int = Field(1, ge=0, description="Guard: fewer visible characters is negative.")
    guard_min_tokens: int = Field(1, ge=0, description="Guard: fewer words/numbers is negative.")
    group_id: str = Field("cutalign-judge", description="Consumer group of the judge service.")
    batch_size: int = Field(64, ge=1, description="Samples polled and judged per batch (one commit each).")
    concurrency: int = Field(4, ge=1, description="Judge calls in flight at once (thread-safe judges).")
    http_port: int = Field(8091, ge=0, description="Health and metrics port of the judge service.")


class TrainerSettings(BaseSettings):
    """CUT and baseline training hyperparameters (docs/method.md §5)."""

    model_config = _section("TRAINER")

    objective: Literal["cut", "sft", "hindsight", "unlikelihood"] = Field("cut", description="Loss to train.")
    threshold: float = Field(1.1, gt=1.0, description="λ: detection ratio threshold.")
    unlikelihood_weight: float = Field(1.0, ge=0, description="α: unlikelihood weight.")
    gamma: float = Field(0.0, ge=0, description="γ: dynamic weighting exponent (0 = reference code).")
    combine: Literal["mean", "sum"] = Field("mean", description="(L1+L2)/2 (reference) or L1+L2 (paper).")
    normalization: Literal["example", "batch"] = Field(
        "example",
        description="Loss per example, examples averaged (the published micro-batch-1 objective at any "
        "micro-batch size), or token means per micro-batch (earlier releases).",
    )
    learning_rate: float = Field(4e-4, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps spent warming up.")
    epochs: int = Field(1, ge=1, description="Passes over the data.")
    micro_batch_size: int = Field(8, ge=1, description="Examples per forward pass.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient norm clip.")
    cutoff: int = Field(
        2048,
        ge=8,
        description="Max sequence length (capped at the model's context); left truncation keeps the "
        "response; an example whose response alone does not fit is skipped and counted.",
    )
    lora: bool = Field(True, description="Train a LoRA adapter (else full fine-tuning).")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    lora_targets: Literal["mlp", "attention", "all-linear"] = Field(
        "mlp",
        description="Modules LoRA adapts, found in the model: each block's MLP projections (the method's; "
        "Phi3's fused gate_up_proj, GPT-2's c_fc/c_proj), its attention projections, or every linear layer.",
    )
    lora_target_modules: list[str] = Field(
        default_factory=list,
        description="Module names LoRA adapts, instead of lora_targets (empty: the preset).",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Compute dtype (auto: bfloat16 on GPUs that have it, else float32); trained weights stay "
        "float32 master weights.",
    )
    export_dtype: Literal["base", "float32", "bfloat16", "float16"] = Field(
        "base", description="dtype of the exported merged model (base: the base model's saved dtype)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (less memory, one more forward)."
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="Data parallelism under torchrun: ddp (a full model copy per process) or fsdp (FSDP2 "
        "fully_shard: weights, gradients and optimizer state sharded across processes, per decoder layer).",
    )
    seed: int = Field(42, description="Seed of data order, dropout and downsampling.")
    template: Literal["auto", "plain", "short", "chat"] = Field(
        "auto",
        description="Prompt templates (docs/method.md §2; auto: chat if the tokenizer has a chat template).",
    )
    checkpoint_every: int = Field(50, ge=1, description="Optimizer steps between checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept (older ones deleted).")
    resume: bool = Field(True, description="Continue from the latest complete checkpoint under the output.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    align_p_ratio: float | None = Field(
        None, ge=0, description="File data: keep ratio x negatives positives (manifests come downsampled)."
    )
    span_mode: Literal["ratio", "span", "union", "intersection"] = Field(
        "ratio", description="Unlikelihood tokens: ratio rule (method), judge spans, or both combined."
    )
    mask_after_error: bool = Field(False, description="No Misalign MLE after the first flagged token.")
    align_n_weight: float = Field(1.0, ge=0, description="Weight of the Align-N MLE terms (1.0 = method).")
    group_by_length: bool = Field(True, description="Batch similar-length examples (False: plain shuffle).")
    fuse_forward: Literal["auto", "always", "never"] = Field(
        "auto", description="One forward for Align and Misalign rows (auto: on GPU or equal lengths)."
    )


class BuilderSettings(BaseSettings):
    """Target builder: sharding, sealing and late-judgment policy."""

    model_config = _section("BUILDER")

    iteration: int = Field(
        1,
        ge=1,
        description="First iteration to build; judgments go to the lowest unsealed one from here on "
        "(those with iteration 0, e.g. production feedback, to that one too).",
    )
    shard_max_examples: int = Field(500, ge=1, description="Flush a shard at this many examples...")
    shard_max_seconds: float = Field(5.0, gt=0, description="...or after this many seconds.")
    align_p_ratio: float | None = Field(
        0.25, ge=0, description="Keep ratio x (number of negatives) positives (None: keep every positive)."
    )
    seed: int = Field(42, description="Downsampling seed.")
    seal_count: int | None = Field(None, ge=1, description="Seal automatically at this many examples.")
    seal_deadline_s: float | None = Field(
        None, gt=0, description="Seal automatically this long after the iteration's first shard."
    )
    late_policy: Literal["next", "deadletter"] = Field(
        "deadletter", description="Judgments for sealed iterations."
    )
    dedupe_iterations: int = Field(
        3,
        ge=0,
        description="Sealed iterations before the open one whose sample ids are duplicates in it too (a "
        "prompt re-sent after its iteration was sealed is not trained on twice).",
    )
    http_port: int = Field(8090, ge=0, description="Health, metrics and the seal endpoint.")
    http_host: str = Field("0.0.0.0", description="Address of the HTTP port (127.0.0.1 for local runs).")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of POST /seal (a Secret; unset: generated, in a 0600 file logged)."
    )
    group_id: str = Field("cutalign-target-builder", description="Consumer group on the judgments topic.")


class FeedbackSettings(BaseSettings):
    """Production feedback ingestion endpoint."""

    model_config = _section("FEEDBACK")

    token: SecretStr | None = Field(None, description="Bearer token producers must send (from a Secret).")
    client_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="More bearer tokens, by client name (from a Secret): each client has its own rate limit.",
    )
    user_hash_salt: SecretStr = Field(SecretStr("change-me"), description="Salt for hashing user ids.")
    rate_limit_per_s: float = Field(50.0, gt=0, description="Sustained requests per second per client token.")
    rate_limit_burst: int = Field(100, ge=1, description="Burst size per client token.")
    auth_failure_per_s: float = Field(
        0.2, gt=0, description="Failed authentications per second tolerated from one client address."
    )
    auth_failure_burst: int = Field(10, ge=1, description="Failed authentications in a row from one address.")
    max_body_bytes: int = Field(256 * 1024, ge=1, description="Larger requests get 413.")
    known_policy_versions: list[str] = Field(
        default_factory=list,
        description="Policy checkpoint hashes accepted besides the recent releases (e.g. a base model).",
    )
    release_window: int = Field(
        3, ge=1, description="Feedback on any of this many most recent policy releases is accepted."
    )
    host: str = Field("0.0.0.0", description="Address the ingestion server binds.")
    port: int = Field(8092, ge=0, le=65535, description="Ingestion server port (API, health, metrics).")
    positive_rating_threshold: float = Field(
        4.0, description="A rating at or above this is positive, below it negative (when no flag is sent)."
    )
    require_polarity: bool = Field(
        False, description="Reject (422) feedback with neither a positive flag nor a rating."
    )
    policy_refresh_s: float = Field(
        30.0, gt=0, description="How long the accepted policy versions read from S3 are cached."
    )


class IterationSettings(BaseSettings):
    """One online iteration (docs/method.md §6) in the pipeline: wait, seal, evaluate, gate, promote."""

    model_config = _section("ITERATION")

    builder_url: str | None = Field(
        None, description="Base URL of the running target builder (POST /seal); None: seal in this process."
    )
    builder_admin_token: SecretStr | None = Field(
        None, description="Bearer token of the builder's POST /seal (the builder's admin token, a Secret)."
    )
    policy_admin_url: str | None = Field(
        None, description="Base URL of the embedded policy server to hot-reload after promotion (None: none)."
    )
    policy_admin_token: SecretStr | None = Field(None, description="Bearer token of POST /v1/policy/load.")
    policy_resource: str | None = Field(
        None, description="Deployment (vllm, tgi) or InferenceService (kserve) a promotion rolls out."
    )
    policy_namespace: str | None = Field(
        None, description="Namespace of policy_resource (None: the namespace this pod runs in)."
    )
    rollout_timeout_s: float = Field(1800.0, gt=0, description="Longest wait for a promotion's rollout.")
    target_count: int | None = Field(
        None, ge=1, description="Judged samples to wait for (None: one per published prompt)."
    )
    deadline_s: float = Field(3600.0, gt=0, description="Longest wait for generation and judging.")
    min_count: int = Field(1, ge=1, description="Fewer durable examples than this at the deadline: fail.")
    poll_interval_s: float = Field(2.0, gt=0, description="How often durable progress is read while waiting.")
    count_dead_letters: bool = Field(
        True, description="Count this iteration's dead-lettered prompts/samples/judgments towards the target."
    )
    gate_tolerance: float = Field(
        0.0, ge=0, le=1, description="Promote when eval accuracy >= previous accuracy - tolerance."
    )
    eval_template: Literal["auto", "plain", "short", "chat"] = Field(
        "auto", description="Prompt template of evaluation (auto: chat if the tokenizer has a chat template)."
    )
    eval_device: str = Field(
        "cpu", description="torch device evaluation decodes on (cpu, cuda, cuda:1; auto: cuda when present)."
    )
    eval_max_new_tokens: int = Field(64, ge=1, description="Generation length limit of evaluation.")
    eval_batch_size: int = Field(16, ge=1, description="Eval prompts decoded together.")
    model_id: str = Field("cutalign-policy", description="model_id recorded on promoted policy versions.")
    http_timeout_s: float = Field(120.0, gt=0, description="Timeout of the seal and reload HTTP calls.")
    job_poll_interval_s: float = Field(15.0, gt=0, description="How often a cluster training job is read.")
    job_timeout_s: float = Field(7 * 86400.0, gt=0, description="Longest wait for a cluster training job.")
    abort_file: str | None = Field(
        None, description="A file whose appearance fails the wait with its text (the embedded stack's alarm)."
    )


class OnlineSettings(BaseSettings):
    """A run of several online iterations (``cutalign run``, ``cutalign demo``, ``cutalign experiment``)."""

    model_config = _section("ONLINE")

    iterations: int = Field(3, ge=1, description="Online iterations.")
    prompts_per_iteration: int = Field(
        0, ge=0, description="Fresh prompts per iteration (0: the prompt pool split evenly)."
    )
    steps: int = Field(30, ge=1, description="Optimizer steps per iteration (the same for every objective).")
    arm: str = Field(
        "auto",
        description="Judgment-based objective: a preset (cutalign.iteration.arms) or name:k=v,...; auto: "
        "span when the probe finds the judge reporting error spans, else cut (the method as published).",
    )
    baseline: bool = Field(False, description="Also run SFT on positives in-process on the same prompts.")
    probe: bool = Field(
        True, description="Probe the base model first (cutalign probe); stop if CUT can't learn."
    )
    force: bool = Field(False, description="Run even when the probe says CUT will not learn.")
    warm_start: bool = Field(
        False, description="Run the judgment-reading warm start first, on prompts no iteration uses."
    )
    seed: int = Field(0, ge=0, description="Seed of the prompt order, the trainer and the downsampling.")
    deadline_s: float = Field(
        900.0, gt=0, description="Longest wait for one iteration's generation and judging (services)."
    )
    threads: int = Field(2, ge=1, description="torch threads of the in-process evaluation and baseline.")


class PlatformSettings(BaseSettings):
    """The embedded local platform (Tansu + SeaweedFS on loopback)."""

    model_config = _section("PLATFORM")

    data_dir: str = Field(".cutalign/platform", description="Pid files, logs and SeaweedFS data.")
    kafka_port: int = Field(9092, ge=1, le=65535, description="Tansu listener port.")
    s3_port: int = Field(8333, ge=1, le=55535, description="SeaweedFS S3 port (its gRPC port is +10000).")
    master_port: int = Field(9333, ge=1, le=55535, description="SeaweedFS master port.")
    volume_port: int = Field(8089, ge=1, le=55535, description="SeaweedFS volume port.")
    filer_port: int = Field(8888, ge=1, le=55535, description="SeaweedFS filer port.")
    admin_port: int = Field(23646, ge=1, le=55535, description="SeaweedFS admin port.")
    kafka_bucket: str = Field("tansu", description="Bucket Tansu persists topics into.")


_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$"


class Toleration(BaseModel):
    """A Kubernetes pod toleration, passed through to training pods (e.g. for tainted GPU nodes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str | None = Field(None, description="Taint key (empty with operator Exists: tolerate every taint).")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists ignores `value`.")
    value: str | None = Field(None, description="Taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate (empty: all effects)."
    )


class LauncherSettings(BaseSettings):
    """How a training run is submitted to Kubernetes: a PyTorchJob (Training Operator v1) or a TrainJob."""

    model_config = _section("LAUNCHER")

    backend: Literal["pytorchjob", "trainjob"] = Field(
        "pytorchjob", description="PyTorchJob (kubeflow.org/v1) or Kubeflow Trainer v2 TrainJob."
    )
    namespace: str = Field("cutalign", description="Namespace the training job is created in.")
    image: str = Field(
        f"ghcr.io/cutalign/trainer:{__version__}", description="Trainer image (pinned tag or digest)."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Image pull policy of the training pods."
    )
    service_account: str = Field("cutalign-trainer", description="Service account of the training pods.")
    workers: int = Field(0, ge=0, description="Worker nodes besides the Master (nodes = workers + 1).")
    gpus_per_node: int = Field(1, ge=0, description="nvidia.com/gpu per node (0: CPU training).")
    nproc_per_node: int | None = Field(
        None, ge=1, description="Processes per node (default: gpus_per_node, or 1 without GPUs)."
    )
    cpu: str = Field("4", pattern=_QUANTITY, description="CPU request per node.")
    memory: str = Field("32Gi", pattern=_QUANTITY, description="Memory request and limit per node.")
    shm_size: str = Field("8Gi", pattern=_QUANTITY, description="Size of /dev/shm (NCCL, data loaders).")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels training pods need.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints training pods tolerate.")
    pod_labels: dict[str, str] = Field(
        default_factory=dict, description="Extra labels of training pods (NetworkPolicies select them)."
    )
    s3_secret: str = Field("cutalign-s3", description="Secret holding the S3 access and secret keys.")
    s3_access_key_key: str = Field("access-key", description="Key of the access key in `s3_secret`.")
    s3_secret_key_key: str = Field("secret-key", description="Key of the secret key in `s3_secret`.")
    s3_ca_secret: str | None = Field(
        None, description="Secret with the S3 CA bundle, mounted where `s3.ca_bundle` points (None: none)."
    )
    s3_ca_config_map: str | None = Field(
        None, description="ConfigMap with the S3 CA bundle instead (e.g. kube-root-ca.crt)."
    )
    backoff_limit: int = Field(3, ge=0, description="Pod restarts before the job is marked failed.")
    ttl_seconds_after_finished: int = Field(86400, ge=0, description="Finished jobs are deleted after this.")
    active_deadline_seconds: int | None = Field(None, ge=1, description="Hard wall-clock limit of a run.")
    max_restarts: int = Field(0, ge=0, description="torchrun --max-restarts (in-pod restarts of workers).")
    trainjob_runtime: str = Field(
        "torch-distributed", description="ClusterTrainingRuntime a TrainJob refers to (backend trainjob)."
    )
    crd_dir: str | None = Field(
        None, description="Directory of CRD YAMLs jobs are validated against (default: cutalign's)."
    )

    @model_validator(mode="after")
    def _check_procs(self) -> LauncherSettings:
        if self.gpus_per_node and self.nproc_per_node and self.nproc_per_node > self.gpus_per_node:
            raise ValueError(
                f"launcher.nproc_per_node ({self.nproc_per_node}) exceeds launcher.gpus_per_node "
                f"({self.gpus_per_node}): each process needs its own GPU; lower nproc_per_node or add GPUs"
            )
        return self

    @property
    def procs_per_node(self) -> int:
        """Processes torchrun starts on each node."""
        return self.nproc_per_node or max(self.gpus_per_node, 1)
