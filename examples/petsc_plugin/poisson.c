/* A PETSc program that knows nothing about deepkrylov: it assembles the 5/7-point Laplacian (Dirichlet, unit
   spacing, eliminated boundary) on a DMDA, solves A x = 1 with KSPSolve configured from the options database,
   and prints the iteration count, the reason and the solution norm. deepkrylov's solvers come in through
   options only, e.g.
     ./poisson -dim 3 -n 24 -python $VENV/bin/python -ksp_type python \
               -ksp_python_type deepkrylov.solvers.petsc.CG -pc_type jacobi -ksp_norm_type unpreconditioned
   Like real PETSc codes it hands its DMDA to the KSP (KSPSetDM, with KSPSetDMActive false: the matrix is the one
   assembled here), so python KSP/PC plugins see the grid. -set_ksp_dm 0 leaves the KSP without a DM; a plugin
   that needs the grid then takes it from its -deepkrylov_grid nx,ny,nz option.
*/
#include <petscdmda.h>
#include <petscksp.h>

static PetscErrorCode Assemble(DM da, Mat A)
{
  DMDALocalInfo info;
  MatStencil    row, col[7];
  PetscScalar   v[7];
  PetscInt      i, j, k, n;

  PetscFunctionBeginUser;
  PetscCall(DMDAGetLocalInfo(da, &info));
  for (k = info.zs; k < info.zs + info.zm; k++)
    for (j = info.ys; j < info.ys + info.ym; j++)
      for (i = info.xs; i < info.xs + info.xm; i++) {
        row.i = i; row.j = j; row.k = k; row.c = 0;
        n = 0;
        v[n] = 2.0 * info.dim; col[n] = row; n++;
        if (i > 0)           { v[n] = -1.0; col[n] = row; col[n].i = i - 1; n++; }
        if (i < info.mx - 1) { v[n] = -1.0; col[n] = row; col[n].i = i + 1; n++; }
        if (j > 0)           { v[n] = -1.0; col[n] = row; col[n].j = j - 1; n++; }
        if (j < info.my - 1) { v[n] = -1.0; col[n] = row; col[n].j = j + 1; n++; }
        if (info.dim == 3) {
          if (k > 0)           { v[n] = -1.0; col[n] = row; col[n].k = k - 1; n++; }
          if (k < info.mz - 1) { v[n] = -1.0; col[n] = row; col[n].k = k + 1; n++; }
        }
        PetscCall(MatSetValuesStencil(A, 1, &row, n, col, v, INSERT_VALUES));
      }
  PetscCall(MatAssemblyBegin(A, MAT_FINAL_ASSEMBLY));
  PetscCall(MatAssemblyEnd(A, MAT_FINAL_ASSEMBLY));
  PetscCall(MatSetOption(A, MAT_SYMMETRIC, PETSC_TRUE));
  PetscFunctionReturn(0);
}

int main(int argc, char **argv)
{
  DM                 da;
  Mat                A;
  Vec                x, b;
  KSP                ksp;
  PetscInt           dim = 2, n = 32, its;
  PetscBool          set_ksp_dm = PETSC_TRUE;
  PetscReal          xnorm, rnorm;
  KSPConvergedReason reason;
  const char        *type;

  PetscCall(PetscInitialize(&argc, &argv, NULL, "Poisson on a DMDA solved by KSP (deepkrylov plugin demo)"));
  PetscCall(PetscOptionsGetInt(NULL, NULL, "-dim", &dim, NULL));
  PetscCall(PetscOptionsGetInt(NULL, NULL, "-n", &n, NULL));
  PetscCall(PetscOptionsGetBool(NULL, NULL, "-set_ksp_dm", &set_ksp_dm, NULL));
  PetscCheck(dim == 2 || dim == 3, PETSC_COMM_WORLD, PETSC_ERR_ARG_OUTOFRANGE, "-dim must be 2 or 3, got %" PetscInt_FMT, dim);
  if (dim == 2) {
    PetscCall(DMDACreate2d(PETSC_COMM_WORLD, DM_BOUNDARY_NONE, DM_BOUNDARY_NONE, DMDA_STENCIL_STAR, n, n,
                           PETSC_DECIDE, PETSC_DECIDE, 1, 1, NULL, NULL, &da));
  } else {
    PetscCall(DMDACreate3d(PETSC_COMM_WORLD, DM_BOUNDARY_NONE, DM_BOUNDARY_NONE, DM_BOUNDARY_NONE,
                           DMDA_STENCIL_STAR, n, n, n, PETSC_DECIDE, PETSC_DECIDE, PETSC_DECIDE, 1, 1, NULL, NULL,
                           NULL, &da));
  }
  PetscCall(DMSetFromOptions(da));
  PetscCall(DMSetUp(da));
  PetscCall(DMCreateMatrix(da, &A));
  PetscCall(Assemble(da, A));
  PetscCall(DMCreateGlobalVector(da, &b));
  PetscCall(VecDuplicate(b, &x));
  PetscCall(VecSet(b, 1.0));

  PetscCall(KSPCreate(PETSC_COMM_WORLD, &ksp));
  PetscCall(KSPSetOperators(ksp, A, A));
  if (set_ksp_dm) {
    PetscCall(KSPSetDM(ksp, da));
    PetscCall(KSPSetDMActive(ksp, PETSC_FALSE));
  }
  PetscCall(KSPSetType(ksp, KSPCG));
  PetscCall(KSPSetTolerances(ksp, 1e-8, PETSC_DEFAULT, PETSC_DEFAULT, PETSC_DEFAULT));
  PetscCall(KSPSetFromOptions(ksp));
  PetscCall(KSPSolve(ksp, b, x));

  PetscCall(KSPGetIterationNumber(ksp, &its));
  PetscCall(KSPGetConvergedReason(ksp, &reason));
  PetscCall(KSPGetResidualNorm(ksp, &rnorm));
  PetscCall(KSPGetType(ksp, &type));
  PetscCall(VecNorm(x, NORM_2, &xnorm));
  PetscCall(PetscPrintf(PETSC_COMM_WORLD, "ksp_type %s iterations %" PetscInt_FMT " reason %s residual %.10e xnorm %.12e\n",
                        type, its, KSPConvergedReasons[reason], (double)rnorm, (double)xnorm));

  PetscCall(KSPDestroy(&ksp));
  PetscCall(VecDestroy(&x));
  PetscCall(VecDestroy(&b));
  PetscCall(MatDestroy(&A));
  PetscCall(DMDestroy(&da));
  PetscCall(PetscFinalize());
  return 0;
}
