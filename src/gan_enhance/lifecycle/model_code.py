"""The "model from code" file MLflow executes when it loads a registered version (do not import it)."""

from mlflow.models import set_model

from gan_enhance.lifecycle.pyfunc_model import EnhancerModel

set_model(EnhancerModel())
