"""Dataset layouts, in one torch-free place for training, evaluation and calibration alike.

* MVTec AD (:mod:`.mvtec`: ``<class>/train/good``, ``<class>/test/<defect>``, ``<class>/ground_truth/<defect>``,
  or the DiAD reference's ``train.json`` / ``test.json``), VisA (:mod:`.visa`: ``split_csv/1cls.csv``) and the
  plain folder (:mod:`.folder`: ``<class>/good``, optional ``<class>/<defect>`` and
  ``<class>/ground_truth/<defect>``), found by :func:`load_index`;
* one rule for mask names and where masks lie (:mod:`.paths`), one for an image's class;
* the held-out calibration split of ``training.fit`` (:mod:`.split_file`);
* :func:`inspect`: every image and mask read as training reads them, every problem named (:mod:`.report`).
"""

from runtime.datasets.detect import LAYOUTS, load_index
from runtime.datasets.index import CALIBRATION, SPLITS, TEST, TRAIN, DatasetIndex, Problem, Sample, split_validation
from runtime.datasets.paths import GROUND_TRUTH, MASK_NAMES, class_of, find_mask, ground_truth_folder
from runtime.datasets.report import Report, inspect

__all__ = [
    "CALIBRATION",
    "GROUND_TRUTH",
    "LAYOUTS",
    "MASK_NAMES",
    "SPLITS",
    "TEST",
    "TRAIN",
    "DatasetIndex",
    "Problem",
    "Report",
    "Sample",
    "class_of",
    "find_mask",
    "ground_truth_folder",
    "inspect",
    "load_index",
    "split_validation",
]
