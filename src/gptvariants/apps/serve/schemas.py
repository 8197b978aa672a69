"""The JSON API's requests, validated by pydantic (strict types): a value of the wrong JSON type or out
of range is a 422 naming the field."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# bounds that keep one request's work small enough for a shared playground
MAX_PROMPT_CHARS = 4_000
MAX_TEXT_CHARS = 20_000
MAX_NEW_TOKENS = 1_024
MAX_TOP_N = 20
MAX_MC_SAMPLES = 64
MAX_STOPS = 8
MAX_SET_TEXTS = 64  # a sigmoid set is listed up to this many tokens; set_size counts them all


class _Request(BaseModel):
    # a misspelt option is an error, not silently ignored; strict: "5" is not the integer 5, nor
    # 1 the boolean true (JSON has its own types: a string where a number belongs is a client's bug)
    model_config = ConfigDict(extra="forbid", strict=True)

    run: str = Field(min_length=1, description="a run name from GET /api/runs")
    top_n: int = Field(5, ge=0, le=MAX_TOP_N, description="alternatives listed per token (with the set and draws)")
    tau: float = Field(0.5, ge=0.0, le=1.0, description="sigmoid set threshold: {v : sigmoid(z_v) > tau}")
    method: str | None = Field(None, description="gptv sample's --method (default: the loaded one)")
    mc_samples: int | None = Field(
        None, ge=0, le=MAX_MC_SAMPLES, description="draws of the method (default: the run's; 0 = the point estimate)"
    )
    seed: int | None = Field(None, ge=0, lt=2**63)
    unknown: Literal["error", "skip"] = "error"


class GenerateRequest(_Request):
    """POST /api/generate: the options of ``gptv sample`` for one prompt and one run."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int = Field(100, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="0 means greedy")
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    greedy: bool = False
    stop: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=MAX_STOPS)
    stop_at_eot: bool = True
    sig_mode: Literal["normalize", "set"] = "normalize"

    def sampling(self) -> dict:
        """Keyword arguments of ``LanguageModel.stream``."""
        return self.model_dump(exclude={"run", "prompt", "max_new_tokens"})


class ScoreRequest(_Request):
    """POST /api/score: per-token scores of a text under one run."""

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    conformal: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="an alpha fitted by gptv conformal (GET /api/runs lists them): each token's LAC set size "
        "and whether the set holds it",
    )

    def options(self) -> dict:
        """Keyword arguments of ``LanguageModel.score``."""
        return self.model_dump(exclude={"run", "text"})


LIMITS = {
    "prompt_chars": MAX_PROMPT_CHARS,
    "text_chars": MAX_TEXT_CHARS,
    "max_new_tokens": MAX_NEW_TOKENS,
    "top_n": MAX_TOP_N,
    "mc_samples": MAX_MC_SAMPLES,
}
