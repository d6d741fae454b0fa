"""emvae's figures: matplotlib plots drawn from arrays (:mod:`.plots`), pictures of tiles with
text around them (:mod:`.tiles`), and the report page with its registry of every figure and
caption (:mod:`.page`). One style for all: :mod:`emvae.plotstyle`."""
