# histoflow: histology / microscopy images -> segmentations, measurements and an HTML report.
#
# This file is the table of contents. Stages live in workflow/rules/*.smk; the logic they call lives
# in the histoflow package (workflow/histoflow). Configuration: config.yaml, validated against
# workflow/schemas/config.schema.yaml (every key documented there, with its default).

configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/wsi_common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/stain.smk"
include: "workflow/rules/patches.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/postprocess.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/volumes.smk"
include: "workflow/rules/wsi.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        f"{RESULTS}/report.html",
        slide_targets(),
    default_target: True
