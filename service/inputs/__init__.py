"""What clients send, turned into what the model takes: uint8 (n, 28, 28), bright ink on black.

One module per kind of input: `arrays` (pixel lists and .npy), `pictures` (encoded image files),
`mnist` (MNIST's own normalisation of a grey picture), `data_urls` (canvas exports). Numpy and
Pillow only, no model, so the web page's backend and the tests import them cheaply. Bad input only
ever raises `service.refusals.Rejected`; `limits` caps every cost before it is paid.
"""
