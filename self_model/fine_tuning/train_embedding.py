"""Embedding models: contrastive training (InfoNCE over in-batch and hard negatives) of a decoder or encoder with
sentence-transformers (SentenceTransformerTrainer, MultipleNegativesRankingLoss), evaluated by retrieval recall@k
and MRR on the eval rows. The output directory loads with `SentenceTransformer(path)`.

    uv run python self_model/fine_tuning/train_embedding.py --config config/self_model_config/embedding.yaml [--dry-run]
    torchrun --nproc_per_node 2 self_model/fine_tuning/train_embedding.py --config ...

The loss (sentence-transformers' MultipleNegativesRankingLoss): for query q_i with positive p_i and hard negatives
n_i1..n_ik, softmax cross-entropy of cos(q_i, p_i) / temperature against cos(q_i, d) / temperature for every
positive and hard negative d of the batch.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from typing import Literal

from self_model.config import RunConfig, StageSpec, option
from self_model.data.embedding import EmbeddingDataArgs, build_embedding_data
from self_model.memory import Workload
from self_model.modeling import build_peft_config, load_model, pretrained_kwargs, set_distinct_pad_token
from self_model.stage import fit, open_stage, present_data, save_final, stage_main

EVALUATOR_NAME = "retrieval"  # metric keys: eval_retrieval_cosine_recall@1, eval_retrieval_cosine_mrr@10, ...


@dataclass
class EmbeddingArgs:
    """Pooling, the contrastive temperature, and the retrieval metrics."""

    pooling: Literal["auto", "last_token", "mean", "cls"] = option(
        "How token states become one embedding: last_token (the last real token; what a decoder's causal attention "
        "lets see the whole text), mean, or cls (the first token). auto: last_token for decoder models, else mean.",
        "auto")
    temperature: float = option("InfoNCE temperature: similarities are divided by it (lower = sharper).", 0.05)
    recall_at: list[int] = option("k of the recall@k (and accuracy@k) reported on the eval rows.", [1, 5, 10])
    mrr_at: int = option("k of MRR@k on the eval rows.", 10)


def stage_checks(cfg: RunConfig) -> list[tuple[str, str]]:
    args: EmbeddingArgs = cfg.sections["embedding"]
    problems = []
    if args.temperature <= 0:
        problems.append(("embedding.temperature", f"must be positive, got {args.temperature}"))
    if not args.recall_at or any(k < 1 for k in args.recall_at) or args.mrr_at < 1:
        problems.append(("embedding.recall_at", f"k must be at least 1, got {args.recall_at} / mrr_at {args.mrr_at}"))
    if cfg.template or cfg.template_path:
        problems.append(("template", "embedding texts are encoded as they are, without a chat template; remove it"))
    return problems


def workload(cfg: RunConfig, args) -> Workload:
    texts = 2 + (cfg.data.num_negatives or 1)  # query, positive, hard negatives
    return Workload(texts * args.per_device_train_batch_size * cfg.data.max_length, 0, lm_head=False)


STAGE = StageSpec(
    name="embedding",
    training_args_class="sentence_transformers.sentence_transformer.training_args:SentenceTransformerTrainingArguments",
    data_class=EmbeddingDataArgs,
    sections={"embedding": EmbeddingArgs},
    checks=stage_checks,
    workload=workload,
    # a repeated text in a batch would be its own negative; Liger patches causal-LM heads, which an encoder lacks
    training_defaults=lambda cfg: {"batch_sampler": "no_duplicates", "use_liger_kernel": False},
)


def is_decoder(model_type: str) -> bool:
    """A causal LM without a masked-LM head (BERT-like encoders have both)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def build_model(cfg: RunConfig, tokenizer, training_args, workdir: str):
    """A SentenceTransformer: the backbone (random init written to `workdir` first), pooling, normalisation."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoModel

    source = cfg.model_name_or_path
    if cfg.model.init_from_config:
        load_model(cfg, tokenizer, training_args, AutoModel).save_pretrained(workdir)
        tokenizer.save_pretrained(workdir)
        source = workdir
    tokenizer_path = cfg.tokenizer_name_or_path if source == cfg.model_name_or_path else None
    backbone = Transformer(source, max_seq_length=cfg.data.max_length, tokenizer_name_or_path=tokenizer_path,
                           model_kwargs=pretrained_kwargs(cfg, training_args))
    set_distinct_pad_token(backbone.tokenizer)
    backbone.model.config.pad_token_id = backbone.tokenizer.pad_token_id
    if len(backbone.tokenizer) > backbone.model.get_input_embeddings().weight.shape[0]:
        backbone.model.resize_token_embeddings(len(backbone.tokenizer), pad_to_multiple_of=64)
    pooling = cfg.sections["embedding"].pooling
    if pooling == "auto":
        pooling = "last_token" if is_decoder(backbone.model.config.model_type) else "mean"
    modules = [backbone, Pooling(backbone.get_embedding_dimension(), pooling_mode=pooling.replace("_", "")), Normalize()]
    model = SentenceTransformer(modules=modules)
    if cfg.peft.enabled:
        if cfg.peft.method == "qlora":
            from peft import prepare_model_for_kbit_training

            prepare_model_for_kbit_training(backbone.model, training_args.gradient_checkpointing)
        model.add_adapter(build_peft_config(cfg, task_type="FEATURE_EXTRACTION"))
    return model


def retrieval_evaluator(cfg: RunConfig, data, batch_size: int):
    """recall@k, accuracy@k and MRR@k of each eval query finding its positive among all eval texts."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    args: EmbeddingArgs = cfg.sections["embedding"]
    retrieval = data.retrieval
    return InformationRetrievalEvaluator(
        retrieval.queries, retrieval.corpus, retrieval.relevant, name=EVALUATOR_NAME, batch_size=batch_size,
        accuracy_at_k=args.recall_at, precision_recall_at_k=args.recall_at, mrr_at_k=[args.mrr_at],
        ndcg_at_k=[args.mrr_at], map_at_k=[args.mrr_at], score_functions={"cosine": cos_sim}, write_csv=False)


def train(cfg: RunConfig, dry_run: bool = False):
    """Run the stage; returns the trainer (None for a dry run)."""
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    run, training_args, tokenizer, _ = open_stage(cfg, STAGE, dry_run, chat=False)
    data = build_embedding_data(cfg.data, tokenizer, training_args.seed)
    if present_data(run, cfg, data, tokenizer, dry_run):
        return None
    with tempfile.TemporaryDirectory(prefix="embedding-init-") as workdir:  # kept while the weights may be mapped
        model = build_model(cfg, tokenizer, training_args, workdir)
        loss = MultipleNegativesRankingLoss(model, scale=1.0 / cfg.sections["embedding"].temperature)
        evaluator = retrieval_evaluator(cfg, data, training_args.per_device_eval_batch_size) if data.retrieval else None
        trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=data.train,
                                             eval_dataset=data.eval, loss=loss, evaluator=evaluator)
        metrics = fit(trainer, run, cfg.eval_before_training)
    save_final(trainer, model.tokenizer, None, run, cfg, STAGE.name, data, metrics, pooling=model[1].pooling_mode)
    return trainer


main = stage_main(STAGE, train)

if __name__ == "__main__":
    sys.exit(main())
