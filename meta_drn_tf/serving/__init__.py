"""Using a trained network: TF Serving SavedModels (`saved_model.py`) and `Segmenter` (`segmenter.py`)."""
