"""Tuning with Optuna, tracked in MLflow.

- `fit_search`: per tile size, the largest batch that trains within a memory budget (fit.py);
- `hparams`: a hyperparameter study maximising the validation PSNR gain (hparams.py);
- `tune_degradation`, `report`: a degradation's parameters whose LR looks most like real LR,
  and training on real vs synthetic pairs (degradation.py);
- study.py: what the studies share (storage, opening one from several workers, parent runs).

Each takes its config from bpho/config.py (`FitConfig`, `HparamsConfig`, ...).
"""

from bpho.config import DegradationReportConfig, DegradationStudyConfig, FitConfig, HparamsConfig, SearchSpace
from bpho.tune.degradation import (DegradationReport, DegradationStudyResult, ReportRow, report, report_table,
                                   similarity, tune_degradation)
from bpho.tune.fit import FitResult, fit_cap, fit_path, fit_search
from bpho.tune.hparams import hparams  # the function; the module stays sys.modules["bpho.tune.hparams"]
from bpho.tune.study import StudyResult, default_storage, open_study

__all__ = ["FitConfig", "FitResult", "fit_search", "fit_cap", "fit_path",
           "HparamsConfig", "SearchSpace", "StudyResult", "hparams", "default_storage", "open_study",
           "DegradationStudyConfig", "DegradationStudyResult", "tune_degradation", "similarity",
           "DegradationReportConfig", "DegradationReport", "ReportRow", "report", "report_table"]
