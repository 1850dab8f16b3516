"""Export to PyTorch: ordinary circular convolutions that match transform/predict."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import convredunet as crn  # noqa: E402
from convredunet.export import centred_kernels, kernel_energy_kept  # noqa: E402
from convredunet.testing import assert_shift_equivariant, assert_shift_invariant  # noqa: E402

from conftest import signals  # noqa: E402

CASES = {
    "1d-even": lambda: (crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=5, kernel_size=4), (2, 10), 3),
    "1d-odd": lambda: (crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=5, kernel_size=3), (1, 9), 3),
    "1d-bias": lambda: (crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=5, kernel_size=3,
                                      lifting_bias=0.7), (1, 9), 3),
    "1d-nolift": lambda: (crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=None), (3, 8), 2),
    "2d-even": lambda: (crn.ReduNet2D(n_layers=2, n_channels=4, kernel_size=3), (1, 6, 4), 2),
    "2d-odd": lambda: (crn.ReduNet2D(n_layers=2, n_channels=4, kernel_size=2,
                                     nonlinearity="abs"), (2, 5, 7), 2),
    "vector": lambda: (crn.ReduNetVector(n_layers=3), (9,), 3),
}


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def case(request):
    net, shape, k = CASES[request.param]()
    X, y = signals(24, shape, k=k)
    net.fit(X, y)
    return net, X


@pytest.mark.parametrize("conv", ["fft", "direct"])
def test_export_matches_transform_and_predict(case, conv):
    net, X = case
    module = net.to_torch(dtype=torch.float64, conv=conv)
    x = torch.from_numpy(X)
    x_before = x.clone()
    ref = net.transform(X)
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), ref, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(module.predict(x).numpy(), net.predict(X))
        np.testing.assert_allclose(module.membership(x).numpy(), net.predict_proba(X),
                                   atol=1e-10)
        module32 = net.to_torch(conv=conv)
        out32 = module32(x.float()).numpy()
        np.testing.assert_array_equal(module32.predict(x.float()).numpy(), net.predict(X))
    assert torch.equal(x, x_before)
    assert out32.dtype == np.float32
    assert np.max(np.abs(out32 - ref)) / np.max(np.abs(ref)) < 1e-4


def test_fft_and_direct_share_parameters_and_gradients(case):
    net, X = case
    if not net.signal_shape_:
        pytest.skip("vectors have no convolution")
    fft = net.to_torch(dtype=torch.float64, conv="fft", kernel_size=3)
    direct = fft.with_conv("direct")
    assert (fft.conv, direct.conv) == ("fft", "direct")
    assert fft.state_dict().keys() == direct.state_dict().keys()
    x = torch.from_numpy(X[:6]).requires_grad_(True)
    grads = []
    for module in (fft, direct):
        out = module(x)
        np.testing.assert_allclose(out.detach().numpy(), direct(x).detach().numpy(),
                                   atol=1e-12)
        (g,) = torch.autograd.grad((out * out.detach().roll(1, -1)).sum(), x)
        grads.append(g.numpy())
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-9)


def test_auto_picks_by_kernel_size():
    from convredunet.export import AUTO_DIRECT_MAX_TAPS, choose_conv

    assert choose_conv(40, 1) == "fft"
    assert choose_conv(1, 1) == "direct"
    assert choose_conv(AUTO_DIRECT_MAX_TAPS, 1) == "direct"
    assert choose_conv(AUTO_DIRECT_MAX_TAPS + 1, 1) == "fft"
    assert choose_conv(3, 2) == "fft"


def test_module_is_made_of_standard_layers(case):
    net, _ = case
    module = net.to_torch()
    kinds = {type(m).__name__ for m in module.modules()}
    assert not kinds & {"Parameter"}
    for p in module.parameters():
        assert not p.is_complex()
    if net.signal_shape_:
        conv = "Conv1d" if len(net.signal_shape_) == 1 else "Conv2d"
        pad = "CircularPad1d" if len(net.signal_shape_) == 1 else "CircularPad2d"
        assert {conv, pad} <= kinds


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("conv", ["fft", "direct"])
def test_trace_and_script(case, conv):
    net, X = case
    module = net.to_torch(dtype=torch.float32, conv=conv).eval()
    x = torch.from_numpy(X).float()
    with torch.no_grad():
        ref = module(x)
        traced = torch.jit.trace(module, x[:4])
        scripted = torch.jit.script(module)
        torch.testing.assert_close(traced(x), ref)
        torch.testing.assert_close(scripted(x), ref)
        torch.testing.assert_close(scripted.predict(x), module.predict(x))
        torch.testing.assert_close(scripted.membership(x), module.membership(x))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_outputs_and_input_shapes(case, tmp_path):
    from convredunet.export import export_onnx

    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    net, X = case
    module = net.to_torch(dtype=torch.float32)  # "auto": ONNX runs it as direct
    strict = tmp_path / "strict.onnx"
    export_onnx(module, strict, any_rank=False)
    onnx.checker.check_model(onnx.load(str(strict)))
    path = tmp_path / "net.onnx"
    export_onnx(module, path)
    assert not onnx.load(str(path)).graph.input[0].type.tensor_type.HasField("shape")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["features", "scores", "labels"]
    x = X.astype(np.float32)
    if net.classifier == "subspace":
        expected_scores = -net.subspace_distances(X)
    else:
        expected_scores = net.predict_proba(X)
    shapes = [x.shape, (len(x), -1)]  # as fitted, flattened, and one channel squeezed
    if x.ndim > 2 and x.shape[1] == 1:
        shapes.append((len(x),) + x.shape[2:])
    for shape in shapes:
        for n in (len(x), 7):
            xi = x.reshape(shape)[:n]
            features, scores, labels = session.run(None, {"x": xi})
            np.testing.assert_allclose(features, net.transform(X[:n]), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(scores, expected_scores[:n], rtol=1e-4, atol=1e-4)
            np.testing.assert_array_equal(labels, net.predict(X[:n]))


def test_truncated_kernels():
    X, y = signals(30, (1, 16), k=3)
    net = crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=6, kernel_size=5).fit(X, y)
    energies = [kernel_energy_kept(net, k) for k in (1, 3, 7, 11, 16)]
    assert all(b >= a for a, b in zip(energies, energies[1:]))
    assert energies[-1] == pytest.approx(1.0)
    no_layer = crn.ReduNet1D(n_layers=0, n_channels=6, kernel_size=5).fit(X, y)
    assert kernel_energy_kept(no_layer, 3) == 1.0  # nothing to truncate
    x = torch.from_numpy(X)
    full = net.to_torch(dtype=torch.float64, kernel_size=16)
    with torch.no_grad():
        np.testing.assert_allclose(full(x).numpy(), net.transform(X), atol=1e-10)
    small = net.to_torch(dtype=torch.float64, kernel_size=5)
    weights = [m.weight for m in small.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [w.shape[-1] for w in weights[1:]] == [5] * (len(weights) - 1)
    # Still circular, hence still exactly shift-equivariant.
    assert_shift_equivariant(lambda a: small(torch.from_numpy(a)).detach().numpy(),
                             X[:3], ndim=1)


def test_centred_kernels_layout():
    kern = np.arange(7.0).reshape(1, 1, 7)
    np.testing.assert_array_equal(centred_kernels(kern, 3)[0, 0], [6.0, 0.0, 1.0])
    np.testing.assert_array_equal(centred_kernels(kern, 4)[0, 0], [6.0, 0.0, 1.0, 2.0])


@pytest.mark.slow
def test_finetuning_keeps_invariance():
    X, y = signals(30, (1, 12), k=3)
    net = crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=6, kernel_size=3).fit(X, y)
    module = net.to_torch(dtype=torch.float64)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    x, target = torch.from_numpy(X), torch.from_numpy(y)
    before = [p.detach().clone() for p in module.parameters()]
    for _ in range(3):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(module.logits(x) / 500.0, target)
        loss.backward()
        optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))
    with torch.no_grad():
        assert_shift_invariant(lambda a: module.predict(torch.from_numpy(a)).numpy(), X[:4],
                               ndim=1)


def test_bad_export_arguments(case):
    net, _ = case
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        net.to_torch(dtype=torch.float16)
    if net.signal_shape_:
        with pytest.raises(ValueError, match="kernel_size must be a positive integer or None"):
            net.to_torch(kernel_size=0)
        with pytest.raises(ValueError, match="kernel_size must be at most the signal size"):
            net.to_torch(kernel_size=99)
    with pytest.raises(ValueError, match="conv must be one of 'auto', 'fft', 'direct'"):
        net.to_torch(conv="fast")
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        type(net)().to_torch()


@pytest.mark.parametrize("conv", ["fft", "direct"])
def test_blocks_of_samples_give_the_same_result(case, conv):
    net, X = case
    module = net.to_torch(dtype=torch.float64, conv=conv)
    x = torch.from_numpy(X)
    with torch.no_grad():
        whole = module(x), module.logits(x), module.predict(x)
        module.chunk_size = 5  # 24 samples: blocks of 5, 5, 5, 5, 4
        blocks = module(x), module.logits(x), module.predict(x)
    for a, b in zip(whole, blocks):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("shape", [(9,), (10,), (6, 4), (5, 7)])
def test_real_dft_and_its_inverse_equal_rfftn_and_irfftn(shape):
    from convredunet.export import RealDFT

    z = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 2) + shape))
    dims = list(range(2, 2 + len(shape)))
    v = torch.view_as_real(torch.fft.rfftn(z, dim=dims, norm="ortho"))
    expected = v.reshape(3, 2, -1, 2).permute(2, 1, 0, 3)  # (F, C, b, 2)
    dft = RealDFT(shape, torch.float64)
    np.testing.assert_allclose(dft(z).numpy(), expected.numpy(), atol=1e-13)
    # The inverse of any half spectrum (self-conjugate frequencies' imaginary parts
    # included) is irfftn's.
    w = torch.from_numpy(np.random.default_rng(1).standard_normal(tuple(expected.shape)))
    half = list(shape[:-1]) + [shape[-1] // 2 + 1]
    w_hat = torch.view_as_complex(w.permute(2, 1, 0, 3).contiguous()).reshape([3, 2] + half)
    np.testing.assert_allclose(dft.inverse(w).numpy(), torch.fft.irfftn(
        w_hat, s=shape, dim=dims, norm="ortho").numpy(), atol=1e-13)


def test_subspace_head_is_trainable_and_invariant():
    X, y = signals(24, (1, 10), k=3)
    net = crn.ReduNet1D(eps2=0.1, n_layers=1, n_channels=4, kernel_size=3,
                        classifier="subspace", n_components=2).fit(X, y)
    module = net.to_torch(dtype=torch.float64)
    names = dict(module.named_parameters())
    assert "head.bases" in names and names["head.bases"].shape == (3, 6, 4, 2, 2)
    with torch.no_grad():
        names["head.bases"].add_(0.3 * torch.randn_like(names["head.bases"]))
        for conv in ("fft", "direct"):
            m = module.with_conv(conv)
            assert_shift_invariant(lambda a: m.predict(torch.from_numpy(a)).numpy(), X, ndim=1)
            d = m.subspace_distances(torch.from_numpy(X))
            np.testing.assert_allclose(d.numpy(), module.subspace_distances(
                torch.from_numpy(X)).numpy(), atol=1e-12)


def test_operator_cache_follows_the_parameters():
    X, y = signals(24, (1, 10), k=3)
    net = crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=4, kernel_size=3).fit(X, y)
    module = net.to_torch(dtype=torch.float64, conv="fft")
    other = net.to_torch(dtype=torch.float64, conv="fft")
    x = torch.from_numpy(X)

    def uncached(m):
        return m(x).detach()  # autograd on: operators rebuilt, never cached

    with torch.no_grad():
        torch.testing.assert_close(module(x), uncached(module))
        assert module._ops_cache is not None
        module.layers[0].conv.weight.mul_(1.5)  # in place: the version counter moves
        torch.testing.assert_close(module(x), uncached(module))
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-2)
    (module(x) ** 3).sum().backward()
    optimizer.step()
    with torch.no_grad():
        torch.testing.assert_close(module(x), uncached(module))
        module.load_state_dict(other.state_dict())
        torch.testing.assert_close(module(x), other(x))
    scripted = torch.jit.script(module)
    torch.testing.assert_close(scripted(x), other(x))
    import pickle

    assert pickle.loads(pickle.dumps(module))._ops_cache is None


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_closed_form_operators_serve_until_the_weights_change(dtype):
    # 10 signals per class: low-rank classes with 30 channels (30 signals: E dense), and
    # with 40 channels and 20 signals E low rank too.
    for n, n_channels in ((30, 30), (20, 40)):
        X, y = signals(n, (1, 10), k=n // 10)
        net = crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=n_channels, kernel_size=3,
                            n_components=3).fit(X, y)
        assert net.layers_[0].lowrank_classes == list(range(n // 10))
        assert net.layers_[0].solution.e_lowrank == (n < n_channels)
        module = net.to_torch(dtype=dtype, conv="fft")
        k = len(net.classes_)
        assert len(module._ops_cache[0]) > k + 1  # the Woodbury factors
        x = torch.as_tensor(X, dtype=dtype)
        tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-3,
                                                                                 atol=1e-4)
        with torch.no_grad():
            np.testing.assert_allclose(module(x).numpy(), net.transform(X), **tol)
            np.testing.assert_array_equal(module.predict(x).numpy(), net.predict(X))
            np.testing.assert_allclose(module.subspace_distances(x).numpy(),
                                       net.subspace_distances(X), **tol)
            if dtype == torch.float64:  # the last layer's scores: its own membership
                np.testing.assert_allclose(module.membership(x).numpy(), net.predict_proba(X),
                                           atol=1e-8)
            # The same module with its operators rebuilt from the weights agrees.
            rebuilt = module.with_conv("fft")
            assert rebuilt._ops_cache is None
            np.testing.assert_allclose(rebuilt(x).numpy(), module(x).numpy(), **tol)
            # Once the weights change, the operators are the new weights'.
            module.layers[0].conv.weight.mul_(0.5)
            rebuilt.layers[0].conv.weight.mul_(0.5)
            np.testing.assert_allclose(module(x).numpy(), rebuilt(x).numpy(), **tol)
            assert len(module._ops_cache[0]) == k + 1
    # Truncated kernels are not the closed form: no factors.
    assert net.to_torch(dtype=dtype, kernel_size=3, conv="fft")._ops_cache is None
