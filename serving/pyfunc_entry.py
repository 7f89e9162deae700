"""Model-from-code entry point of the recsys pyfunc (see ``recsys.serving.pyfunc``); MLflow runs this file."""

import mlflow

from recsys.serving.pyfunc import RecsysPyfunc

mlflow.models.set_model(RecsysPyfunc())
