"""``opensora-train prepare`` as a data pipeline: from a folder of videos to a scored, filtered training set.

The stages follow the official Open-Sora v1.2 data processing (docs/data_processing.md, tools/), each optional:

1. sources       folder (same-name ``.txt`` captions) or ``path,text`` CSV, probed with PyAV (``..prepare``)
2. scene cut     long videos split at scene changes with PySceneDetect (:mod:`.scenes`)
3. scores        per clip: optical-flow motion and camera motion (:mod:`.motion`), text area by OCR
                 (:mod:`.text`), sharpness / exposure (:mod:`.quality`), LAION aesthetic score on CLIP
                 (:mod:`.clip_models`, user-supplied model files only)
4. filters       thresholds on any score, the count removed by each (:mod:`.filters`)
5. captions      ``.txt`` / CSV captions, an optional captioner (:mod:`.captions`), then the CLIP caption-clip
                 match score and filters on it, then the official score phrases appended to the captions
6. output        the metadata CSV (official columns + score columns) and an HTML report (:mod:`.report`)

:func:`.run.run_pipeline` drives them. Work is resumable: scene lists, clip files and scores are kept in a
work folder and reused on the next run. The libraries of the optional extra ``[data]`` (OpenCV, PySceneDetect,
RapidOCR) are imported only by the stages that need them (:mod:`.deps`); the trainer never imports this package.
"""
