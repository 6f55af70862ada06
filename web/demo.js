// The mobilenets browser demo: the classifier and the detector that `mobilenets demo web`
// exported (models/manifest.json names them), run by onnxruntime-web's wasm build on one
// thread, on an image file or on camera frames.
//
// The input tensor is built as mobilenets.data.transforms.eval_transform builds it in Python,
// in float32 step by step, so that for an image at the model's input size it is the same
// tensor to the bit (tests/web checks it): uint8 RGB * (1 / 255), minus mean, over std. A
// one-channel model reads a grey image's value, else torchvision's luma of the pixel. Resizing
// follows Python's geometry (straight to the input size; for a classifier whose preprocessing
// has `resize`, the shorter side to it, then a centre crop) with the browser's resampling,
// which is not torchvision's antialiased bilinear: other sizes give close inputs, not equal
// ones.
//
// For tests and for the console, the last frame's results are window.demoResult and its
// input tensors window.demoInputs; document.body.dataset.state says loading, ready or failed.

"use strict";

const MODELS = "models/";
const ORT_FILES = "ort/";
const TOP_K = 5;
const VIEW_SIZE = [640, 480]; // the largest canvas an image is shown at
const PALETTE = ["red", "lime", "blue", "yellow", "magenta", "cyan", "orange", "white"];
const f32 = Math.fround;
// torchvision's rgb_to_grayscale weights, as float32
const LUMA = [f32(0.2989), f32(0.587), f32(0.114)];

const page = {
  models: document.getElementById("models"),
  file: document.getElementById("file"),
  camera: document.getElementById("camera"),
  threshold: document.getElementById("threshold"),
  error: document.getElementById("error"),
  latency: document.getElementById("latency"),
  view: document.getElementById("view"),
  top5: document.getElementById("top5"),
  top5Title: document.getElementById("top5-title"),
  detections: document.getElementById("detections"),
  detectionsTitle: document.getElementById("detections-title"),
  video: document.getElementById("video"),
};

let demo = null; // {classifier, detector}: manifest entries, each with its session
let stream = null; // the camera's, while it runs
let queue = Promise.resolve(); // frames run one after the other: a session runs one at a time
let shown = null; // the last frame's source and result, redrawn when the threshold changes

// --- Loading --------------------------------------------------------------------------------

async function start() {
  ort.env.wasm.wasmPaths = new URL(ORT_FILES, location.href).href;
  ort.env.wasm.numThreads = 1; // several threads need a cross-origin isolated page
  try {
    const response = await fetch(MODELS + "manifest.json");
    if (!response.ok) {
      throw new Error(`${MODELS}manifest.json: HTTP ${response.status}`);
    }
    const manifest = await response.json();
    demo = {};
    for (const entry of manifest.models) {
      const session = await ort.InferenceSession.create(MODELS + entry.file, {
        executionProviders: ["wasm"],
      });
      demo[entry.kind] = { ...entry, session };
    }
  } catch (error) {
    showError(`cannot load the models: ${error.message}`);
    document.body.dataset.state = "failed";
    return;
  }
  page.models.textContent = Object.values(demo).map(describe).join("; ");
  page.file.disabled = page.camera.disabled = false;
  document.body.dataset.state = "ready";
}

function describe(model) {
  const precision = model.quantization ? "int8" : "fp32";
  const side = model.preprocessing.resolution;
  const classes = model.kind === "detector" ? model.classes.length - 1 : model.classes.length;
  return `${model.kind} ${model.model} (${precision}, ${classes} classes, ${side}x${side} px)`;
}

// --- Input: as eval_transform builds it ---------------------------------------------------

// Python's round(): halves to even, as torchvision's CenterCrop rounds its offset.
function roundHalfEven(value) {
  const floor = Math.floor(value);
  const rest = value - floor;
  if (rest !== 0.5) {
    return Math.round(value);
  }
  return floor % 2 === 0 ? floor : floor + 1;
}

// The RGBA pixels of the model's input square: the image resized to it (a detector, and a
// classifier without `resize`), or the shorter side resized to `resize` and the centre cropped,
// with torchvision's sizes (the longer side truncated) and offsets.
function modelPixels(source, width, height, model) {
  const preprocessing = model.preprocessing;
  const side = preprocessing.resolution;
  let size = [side, side];
  let offset = [0, 0];
  if (model.kind === "classifier" && preprocessing.resize !== null) {
    const resize = preprocessing.resize;
    const longer = Math.floor((resize * Math.max(width, height)) / Math.min(width, height));
    size = width <= height ? [resize, longer] : [longer, resize];
    offset = [roundHalfEven((size[0] - side) / 2), roundHalfEven((size[1] - side) / 2)];
  }
  const canvas = document.createElement("canvas");
  [canvas.width, canvas.height] = size;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.imageSmoothingQuality = "high";
  context.drawImage(source, 0, 0, size[0], size[1]); // pixel for pixel at the input size
  return context.getImageData(offset[0], offset[1], side, side).data;
}

// torchvision's rgb_to_grayscale of a uint8 pixel: float32, each add fused with its multiply
// (one rounding), truncated. Equal to it for all 2^24 colours.
function luma(red, green, blue) {
  let value = f32(red * LUMA[0]);
  value = f32(value + green * LUMA[1]);
  value = f32(value + blue * LUMA[2]);
  return Math.trunc(value);
}

// One channel: a grey image's value (as PIL reads a greyscale file), else the luma.
function greyValues(pixels, area) {
  let grey = true;
  for (let i = 0; i < area && grey; i++) {
    grey = pixels[4 * i] === pixels[4 * i + 1] && pixels[4 * i] === pixels[4 * i + 2];
  }
  const values = new Uint8Array(area);
  for (let i = 0; i < area; i++) {
    const [red, green, blue] = [pixels[4 * i], pixels[4 * i + 1], pixels[4 * i + 2]];
    values[i] = grey ? red : luma(red, green, blue);
  }
  return values;
}

// NCHW float32 [1, C, R, R]: ToDtype(float32, scale=True) multiplies by float32(1 / 255),
// Normalize subtracts the mean and divides by the std, each step rounded to float32.
function inputTensor(pixels, preprocessing) {
  const side = preprocessing.resolution;
  const area = side * side;
  const channels = preprocessing.channels;
  const scale = f32(1 / 255);
  const mean = preprocessing.mean.map(f32);
  const std = preprocessing.std.map(f32);
  const grey = channels === 1 ? greyValues(pixels, area) : null;
  const data = new Float32Array(channels * area);
  for (let channel = 0; channel < channels; channel++) {
    for (let i = 0; i < area; i++) {
      const value = grey ? grey[i] : pixels[4 * i + channel];
      data[channel * area + i] = f32(f32(f32(value * scale) - mean[channel]) / std[channel]);
    }
  }
  return new ort.Tensor("float32", data, [1, channels, side, side]);
}

// --- Outputs -----------------------------------------------------------------------------

function topK(logits, classes, k) {
  const largest = Math.max(...logits);
  const exps = Array.from(logits, (value) => Math.exp(value - largest));
  const total = exps.reduce((sum, value) => sum + value, 0);
  return exps
    .map((value, index) => ({ index, name: classes[index], probability: value / total }))
    .sort((a, b) => b.probability - a.probability || a.index - b.index)
    .slice(0, k);
}

// The detector's rows before its count: boxes normalized (x1, y1, x2, y2), best first.
function detections(outputs, model) {
  const [boxes, scores, classes, count] = model.outputs.map((name) => outputs[name].data);
  const found = [];
  for (let row = 0; row < Number(count[0]); row++) {
    const label = Number(classes[row]);
    found.push({
      box: Array.from(boxes.subarray(4 * row, 4 * row + 4)),
      score: scores[row],
      class: label,
      name: model.classes[label],
    });
  }
  return found;
}

// --- A frame ----------------------------------------------------------------------------

async function runModel(model, source, width, height) {
  const input = inputTensor(modelPixels(source, width, height, model), model.preprocessing);
  const started = performance.now();
  const outputs = await model.session.run({ [model.input]: input });
  return { input: input.data, outputs, milliseconds: performance.now() - started };
}

async function runFrame(source, width, height, label) {
  const started = performance.now();
  const result = { image: label, width, height, latency: {} };
  const inputs = {};
  if (demo.classifier) {
    const run = await runModel(demo.classifier, source, width, height);
    const logits = run.outputs[demo.classifier.outputs[0]].data;
    result.top5 = topK(logits, demo.classifier.classes, TOP_K);
    result.latency.classifier = run.milliseconds;
    inputs.classifier = run.input;
  }
  if (demo.detector) {
    const run = await runModel(demo.detector, source, width, height);
    result.detections = detections(run.outputs, demo.detector);
    result.latency.detector = run.milliseconds;
    inputs.detector = run.input;
  }
  result.latency.frame = performance.now() - started;
  hideError();
  show(source, result);
  window.demoInputs = inputs;
  window.demoResult = result;
}

function enqueue(task) {
  queue = queue.then(task).catch((error) => showError(`cannot run the models: ${error.message}`));
  return queue;
}

// --- Showing it ---------------------------------------------------------------------------

function show(source, result) {
  shown = { source, result };
  const scale = Math.min(VIEW_SIZE[0] / result.width, VIEW_SIZE[1] / result.height);
  const [width, height] = [Math.round(result.width * scale), Math.round(result.height * scale)];
  [page.view.width, page.view.height] = [width, height];
  const context = page.view.getContext("2d");
  context.imageSmoothingEnabled = scale < 1; // small images show their pixels
  context.drawImage(source, 0, 0, width, height);
  page.top5.replaceChildren();
  page.detections.replaceChildren();
  page.top5Title.hidden = !result.top5;
  page.detectionsTitle.hidden = !result.detections;
  for (const { name, probability } of result.top5 || []) {
    page.top5.append(item(`${name} ${(100 * probability).toFixed(1)}%`));
  }
  const threshold = Number(page.threshold.value);
  const drawn = (result.detections || []).filter((found) => found.score >= threshold);
  context.lineWidth = Math.max(2, Math.round(Math.max(width, height) / 160));
  context.font = "14px system-ui, sans-serif";
  for (const found of drawn) {
    const [x1, y1, x2, y2] = found.box;
    const colour = PALETTE[found.class % PALETTE.length];
    const caption = `${found.name} ${found.score.toFixed(2)}`;
    context.strokeStyle = context.fillStyle = colour;
    context.strokeRect(x1 * width, y1 * height, (x2 - x1) * width, (y2 - y1) * height);
    const top = Math.max(0, y1 * height - 18);
    context.fillRect(x1 * width, top, context.measureText(caption).width + 6, 18);
    context.fillStyle = "black";
    context.fillText(caption, x1 * width + 3, top + 14);
    page.detections.append(item(caption));
  }
  if (result.detections && drawn.length === 0) {
    page.detections.append(item(`none with a score of ${threshold} or more`));
  }
  const parts = ["classifier", "detector", "frame"]
    .filter((name) => name in result.latency)
    .map((name) => `${name} ${result.latency[name].toFixed(1)} ms`);
  const runtime = `onnxruntime-web ${ort.env.versions.web}, wasm, 1 thread`;
  page.latency.textContent = `${parts.join(", ")} (${runtime})`;
}

function item(text) {
  const element = document.createElement("li");
  element.textContent = text;
  return element;
}

function clearResults() {
  shown = null;
  window.demoResult = null;
  window.demoInputs = null;
  [page.view.width, page.view.height] = [0, 0];
  page.top5.replaceChildren();
  page.detections.replaceChildren();
  page.top5Title.hidden = page.detectionsTitle.hidden = true;
  page.latency.textContent = "";
}

function showError(message) {
  page.error.textContent = message;
  page.error.hidden = false;
}

function hideError() {
  page.error.textContent = "";
  page.error.hidden = true;
}

// --- Image files and the camera -----------------------------------------------------------

async function openFile(file) {
  let bitmap;
  try {
    // As PIL reads a file: no colour management, no premultiplied alpha.
    bitmap = await createImageBitmap(file, {
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
  } catch {
    clearResults();
    showError(`cannot read ${file.name}: the browser cannot decode it as an image`);
    return;
  }
  await runFrame(bitmap, bitmap.width, bitmap.height, file.name);
}

async function startCamera() {
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (error) {
    showError(`cannot start the camera: ${error.message}`);
    return;
  }
  page.video.srcObject = stream;
  await page.video.play();
  page.camera.textContent = "Stop the camera";
  const next = () => {
    if (!stream) {
      return;
    }
    const { videoWidth, videoHeight } = page.video;
    enqueue(() => runFrame(page.video, videoWidth, videoHeight, "camera")).then(() =>
      requestAnimationFrame(next),
    );
  };
  next();
}

function stopCamera() {
  if (!stream) {
    return;
  }
  for (const track of stream.getTracks()) {
    track.stop();
  }
  stream = null;
  page.video.srcObject = null;
  page.camera.textContent = "Start the camera";
}

page.file.addEventListener("change", () => {
  const [file] = page.file.files;
  if (file) {
    stopCamera();
    enqueue(() => openFile(file));
  }
});
page.camera.addEventListener("click", () => (stream ? stopCamera() : startCamera()));
page.threshold.addEventListener("input", () => shown && show(shown.source, shown.result));

start();
