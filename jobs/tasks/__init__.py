"""One file per recipe: what differs between recipes (model, data, loss, metric, export, run page).

:mod:`jobs.tasks.base` defines :class:`~jobs.tasks.base.Task`; a recipe names its task with
``task:`` (:mod:`jobs.contract.recipe`). Built in: :mod:`jobs.tasks.image_classification`
(ResNet-50) and :mod:`jobs.tasks.translation` (Transformer)."""
