"""A frozen-feature probe of the recommender's base model: a diagnosis on the valid split.

It answers: does the frozen base model's state at the answer position of stage 04's prompt already
hold what a Yes/No answer needs? If the probe beats chance where fine-tuning does not, the signal
is in the features and SFT does not reach it (lr, epochs, steps); if the probe is at chance too, the
information is not there at this size.

Stage 04's own examples (`sft.build_examples`: the same prompts, the train rows 1:1, the valid pairs)
are encoded once by the frozen model. The final hidden state of each prompt's last token (where the
model reads its answer) feeds a logistic regression (scikit-learn), its C chosen by 5-fold
cross-validation on the train pairs, folds grouped by row (a row's target and negative share one
preference text). It then scores the valid pairs once. Beside it, on the same pairs: stage 06's Pop
(baselines/pop.py: the train users who interacted with the item, in their train rows). Each AUC carries
its bootstrap interval over valid rows, and the probe's difference from Pop its paired interval
(msr_utils.intervals).

CLI: python -m msr_utils.probe --dataset microlens50k [--set sft.limit=100 ...]
     -> results/<dataset>/probe.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from msr_utils import config, evaluate, intervals, models, recommender, sft
from msr_utils.baselines.pop import Pop
from msr_utils.config import DATASETS, Params, load_params
from msr_utils.data.schema import IMAGE_PATH, ITEM

CS = (1e-3, 1e-2, 1e-1, 1.0)  # the probe's inverse regularisation strengths, chosen among by cross-validation
FOLDS = 5


@torch.inference_mode()
def last_states(loaded: models.LoadedModel, texts: list[str], batch_size: int = 16,
                progress: bool = True) -> np.ndarray:
    """(len(texts), hidden) float32: the final hidden state at each text's last token (right padding,
    so the last real token is read, never a pad)."""
    tok, out = loaded.tokenizer, []
    for i in tqdm(range(0, len(texts), batch_size), desc="states", unit="batch", disable=not progress):
        enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, padding_side="right",
                  add_special_tokens=sft.add_special(tok, texts[i])).to(loaded.device)
        hidden = loaded.model(**enc, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
        last = enc["attention_mask"].sum(1) - 1
        out.append(hidden[torch.arange(len(hidden)), last].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, loaded.model.config.get_text_config().hidden_size))


def fit(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int):
    """Standardised features -> logistic regression, C chosen by grouped cross-validated AUC (refit on all)."""
    folds = list(GroupKFold(n_splits=min(FOLDS, len(np.unique(groups)))).split(features, labels, groups))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))
    search = GridSearchCV(model, {"logisticregression__C": list(CS)}, scoring="roc_auc", cv=folds)
    return search.fit(features, labels)




def scored(name: str, valid: pd.DataFrame, score: np.ndarray, params: Params) -> intervals.Scored:
    table = valid.assign(**{evaluate.SCORE: score, evaluate.GROUP: evaluate.group_ids(valid)})
    return intervals.scored(name, table, params.eval.ks, evaluate.GROUP, expect_size=2)


def run(params: Params, dataset: str, progress: bool = True) -> dict:
    start, seed = time.perf_counter(), params.base.seed
    torch.manual_seed(seed)
    loaded = models.load_profile(params, "vlm")
    tables = sft.load_tables(params, dataset)
    train, _ = sft.build_examples(params, dataset, loaded, "train", tables)
    valid, _ = sft.build_examples(params, dataset, loaded, "valid", tables)
    if pd.concat([train, valid])[IMAGE_PATH].notna().any():
        raise ValueError("the probe reads text-only prompts, and stage 04's examples carry candidate images: "
                         "run it with --set sft.candidate_image=false (the small profile has no VLM, so none)")
    valid = sft.complete_pairs(valid)  # both sides of each pair, as stage 04 scores them
    x_train = last_states(loaded, train[recommender.PROMPT].tolist(), progress=progress)
    x_valid = last_states(loaded, valid[recommender.PROMPT].tolist(), progress=progress)
    y_train = train[recommender.LABEL].to_numpy()
    probe = fit(x_train, y_train, evaluate.group_ids(train).to_numpy(), seed)
    pop = Pop()
    pop.fit(tables["train"])  # stage 06's Pop: train users who interacted with the item (their train rows)
    rows = {"probe": scored("probe", valid, probe.decision_function(x_valid), params),
            "pop": scored("pop", valid, valid[ITEM].astype(str).map(pop.counts).fillna(0).to_numpy(float), params)}
    i = params.eval.intervals
    out = {"dataset": dataset, "model": loaded.model_ref, "train_examples": len(train),
           "valid_pairs": int(len(valid) // 2), "features": "final hidden state, last prompt token",
           "C": probe.best_params_["logisticregression__C"], "probe_cv_auc": float(probe.best_score_)}
    for name, row in rows.items():
        lo, hi = intervals.interval(row, "auc", i.resamples, seed, i.level)
        out |= {f"{name}_valid_auc": row.point("auc"), f"{name}_valid_auc_lo": lo, f"{name}_valid_auc_hi": hi}
    lo, hi = intervals.difference_interval(rows["probe"], rows["pop"], "auc", i.resamples, seed, i.level)
    out |= {"probe_minus_pop_lo": lo, "probe_minus_pop_hi": hi, "seconds": round(time.perf_counter() - start, 1)}
    path = sft.paths(params, dataset)["results"] / "probe.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. --set sft.limit=100 (repeatable)")
    args = parser.parse_args(argv)
    print(json.dumps(run(load_params(None, config.parse_sets(args.set)), args.dataset), indent=2))


if __name__ == "__main__":
    main()
