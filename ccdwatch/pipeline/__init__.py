"""The pipeline: ingest -> masters -> calibration -> stacking, ordered by :class:`Pipeline`.

``core``        the Pipeline: recover, handle, tick, finish: the only place that orders the stages
``runner``      plan -> run on the workers -> commit, for every stage; pause on a full disk
``ingest``      a path -> a catalogue row (or a quarantine with a reason)
``masters``     settled calibration frames -> master versions
``selection``   which masters calibrate a frame
``calibrate``   a light whose masters exist -> a calibrated product
``stacking``    a quiet group of calibrated lights -> a stack
``context``     the configuration, catalogue and roots every stage works with
``lifecycle``   frames whose raw files vanish, return or change
``gone``        masters whose files vanish or change: retired, made again
(the calibration key and the stack group key are ``ccdwatch.keys``)
"""

from ccdwatch.keys import CalibKey, GroupKey
from ccdwatch.pipeline.core import Pipeline
from ccdwatch.pipeline.ingest import Outcome
from ccdwatch.pipeline.stacking import assign_targets

__all__ = ["CalibKey", "GroupKey", "Outcome", "Pipeline", "assign_targets"]
