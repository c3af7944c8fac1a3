"""TFX's DistributionValidator with an executor that also runs under KubeflowV2DagRunner.

TFX 1.16's Kubeflow V2 entry point (kubeflow_v2_run_executor) hands `use_proto=True` execution parameters to the
executor as the JSON strings the pipeline spec holds, and DistributionValidator's executor, which expects protos,
fails with "'str' object has no attribute 'default_slice_config'". LocalDagRunner hands it protos: those pass as
they are.
"""
from typing import Any

from tensorflow_data_validation.anomalies.proto import custom_validation_config_pb2
from tfx import components, types
from tfx.components.distribution_validator import executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import distribution_validator_pb2
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

_PROTO_PARAMETERS = {
    standard_component_specs.DISTRIBUTION_VALIDATOR_CONFIG_KEY: distribution_validator_pb2.DistributionValidatorConfig,
    standard_component_specs.CUSTOM_VALIDATION_CONFIG_KEY: custom_validation_config_pb2.CustomValidationConfig,
}


class Executor(executor.Executor):
    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> Any:
        parsed = {key: proto_utils.json_to_proto(value, _PROTO_PARAMETERS[key]())
                  if key in _PROTO_PARAMETERS and isinstance(value, str) else value
                  for key, value in exec_properties.items()}
        return super().Do(input_dict, output_dict, parsed)


class DistributionValidator(components.DistributionValidator):
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
