"""Model-from-code entry point of the recsys pyfunc (see ``serving.pyfunc``); MLflow runs this file."""

import mlflow

from serving.pyfunc import RecsysPyfunc

mlflow.models.set_model(RecsysPyfunc())
