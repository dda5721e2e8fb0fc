"""The torch-free run time: load the committed models and score digit pairs.

numpy + onnxruntime + lightgbm only; importing torch anywhere in this package is a bug.
"""

from ensemble.course_data import CourseData, CourseDataError, load_course_npz
from ensemble.manifest import ManifestError
from ensemble.runtime import Ensemble, Prediction

__all__ = ["CourseData", "CourseDataError", "Ensemble", "ManifestError", "Prediction", "load_course_npz"]
