// emvae: regl (regl.min.js, loaded first as a classic script) as the ES module "regl"
export default window.createREGL;
