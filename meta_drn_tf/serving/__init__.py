"""Using a trained network: TF Serving SavedModels (`saved_model.py`), `Segmenter` (`segmenter.py`),
TFLite files (`tflite.py`), image files into mask files (`segment_files.py`) and the labelling page's
work (`labelling.py`)."""
