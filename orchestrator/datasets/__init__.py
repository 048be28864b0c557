"""``podrun data``: data sets to train on without a download (scikit-learn's digits as
ImageNet-layout JPEGs, synthetic ImageNet-sized images, a toy parallel corpus)."""
